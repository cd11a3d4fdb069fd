"""Scripted reaching for Gymnasium Reacher-v5: resolved-rate control of the fingertip.

The two-link arm (links 0.1 m and 0.11 m to the fingertip) is driven by joint torques.
Each step the controller turns the fingertip-to-target error into a desired fingertip
velocity, maps it to joint velocities through the damped least-squares inverse of the
arm Jacobian (well-behaved near the stretched-out singularity), and servoes the joint
velocities with a torque proportional to their error.
"""

from __future__ import annotations

import numpy as np

from o2o.policies.behavior.scripted import ScriptedController


class ReacherController(ScriptedController):
    """Resolved-rate reaching from the named Reacher-v5 fields (memory-less)."""

    task = "reacher"
    version = "1"
    required_fields = ("joint_cos", "joint_sin", "joint_vel", "fingertip_minus_target")

    link_lengths = (0.1, 0.11)  # m: shoulder-elbow, elbow-fingertip (reacher.xml)
    pos_gain = 15.0  # 1/s: desired fingertip speed per metre of error
    max_speed = 1.0  # m/s: cap on the commanded fingertip speed
    vel_gain = 0.3  # torque action per rad/s of joint-velocity error
    damping = 0.02  # m: damped least-squares regulariser

    def jacobian(self, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """2x2 fingertip Jacobian for joint angles given by their cosines and sines."""
        l1, l2 = self.link_lengths
        c01 = cos[0] * cos[1] - sin[0] * sin[1]
        s01 = sin[0] * cos[1] + cos[0] * sin[1]
        return np.array([[-l1 * sin[0] - l2 * s01, -l2 * s01], [l1 * cos[0] + l2 * c01, l2 * c01]])

    def clean_action(self, obs: np.ndarray) -> np.ndarray:
        error = -self.field(obs, "fingertip_minus_target")
        speed = self.pos_gain * error
        norm = np.linalg.norm(speed)
        if norm > self.max_speed:
            speed *= self.max_speed / norm
        jac = self.jacobian(self.field(obs, "joint_cos"), self.field(obs, "joint_sin"))
        qdot_des = jac.T @ np.linalg.solve(jac @ jac.T + self.damping**2 * np.eye(2), speed)
        return self.vel_gain * (qdot_des - self.field(obs, "joint_vel"))
