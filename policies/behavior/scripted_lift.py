"""Scripted pick-and-lift for robosuite Lift (Panda, OSC_POSITION or OSC_POSE delta actions).

Phases latch: hover above the cube, descend to it, close the gripper for a fixed number
of steps, lift. A controller without memory (choosing its move from the current
observation alone) collapses under action noise: a noisy step that opens the fingers
mid-lift sends it back and forth between grasping and lifting. Latching keeps the plan,
and a lost cube (too far from the closed gripper while lifting) restarts the approach.

Action convention (robosuite OSC_POSE): ``[dx, dy, dz, drx, dry, drz, gripper]``, deltas
of 0.05 m and 0.5 rad per unit, rotations about world axes; gripper +1 closes, -1 opens.
On OSC_POSITION (a 4-dim action ``[dx, dy, dz, gripper]``) the arm holds its orientation
itself and the controller drops the rotation part.
``gripper_to_cube_pos`` is cube minus end-effector. Quaternions are (x, y, z, w).
"""

from __future__ import annotations

import numpy as np

from o2o.policies.behavior.scripted import ScriptedController

APPROACH, DESCEND, GRASP, LIFT = "approach", "descend", "grasp", "lift"


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotation vector (world frame, rad) taking orientation ``current`` to ``target``."""
    current = current / np.linalg.norm(current)
    conj = np.array([-current[0], -current[1], -current[2], current[3]])
    q = _quat_mul(target / np.linalg.norm(target), conj)
    if q[3] < 0:  # the short way round
        q = -q
    s = np.linalg.norm(q[:3])
    if s < 1e-9:
        return np.zeros(3)
    return q[:3] / s * 2.0 * np.arctan2(s, q[3])


class LiftController(ScriptedController):
    """Phase-latching grasp-and-lift for robosuite Lift.

    Measured here (robosuite 1.5.2, success reached within 200 steps): clean 20/20 in
    35-40 steps; action noise 0.3: 50/50 (30-125 steps); noise 0.6: 27/50.
    """

    task = "lift"
    version = "1"
    required_fields = ("robot0_eef_pos", "robot0_eef_quat", "gripper_to_cube_pos")

    #: Gripper pointing straight down (180 deg about x) in robosuite's world frame.
    DOWN_QUAT = np.array([1.0, 0.0, 0.0, 0.0])
    hover_height = 0.06  # m above the cube before descending
    grasp_depth = -0.005  # m: end-effector target relative to the cube centre
    grasp_steps = 8  # steps the gripper closes before lifting (fingers need ~6)
    # Tolerances (m) are loose on purpose: the open fingers leave ~2 cm either side of the
    # cube, and with action noise (sigma 0.3 moves the hand ~1.5 cm a step) tight ones are
    # almost never met, so the controller would hover forever.
    align_tol = 0.02  # xy error to start descending / to keep descending
    grasp_tol = 0.015  # z error at which the fingers close
    abort_tol = 0.06  # xy error during the descent that means the cube moved away
    lost_distance = 0.04  # m: while lifting, a cube further than this was dropped
    lift_height = 0.15  # m above the grasp to carry the cube, then hold it there (success: 0.04)
    OSC_POS_SCALE = 0.05  # m per unit action
    OSC_ROT_SCALE = 0.5  # rad per unit action
    # Command half the position error per step: converges in a few steps at 20 Hz without
    # overshooting through the OSC's own lag.
    pos_gain = 0.5 / OSC_POS_SCALE
    rot_gain = 1.0  # fraction of the orientation error commanded per step

    def __init__(self, obs_layout, action_space, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(obs_layout, action_space, **kwargs)
        if self.action_space.shape not in ((7,), (4,)):
            raise ValueError(
                f"LiftController: action shape {self.action_space.shape} is neither OSC_POSE's (7,) nor "
                "OSC_POSITION's (4,)"
            )

    def reset_state(self) -> None:
        self.phase = APPROACH
        self._grasp_count = 0
        self._lift_z = 0.0

    def _move(self, error: np.ndarray) -> np.ndarray:
        return np.clip(self.pos_gain * error, -1.0, 1.0)

    def clean_action(self, obs: np.ndarray) -> np.ndarray:
        to_cube = self.field(obs, "gripper_to_cube_pos")
        rot = rotation_error(self.DOWN_QUAT, self.field(obs, "robot0_eef_quat"))
        action = np.zeros(7)
        action[3:6] = np.clip(self.rot_gain * rot / self.OSC_ROT_SCALE, -1.0, 1.0)

        if self.phase == LIFT and np.linalg.norm(to_cube) > self.lost_distance:
            self.phase = APPROACH  # dropped or missed: try again
        if self.phase == APPROACH:
            error = to_cube + np.array([0.0, 0.0, self.hover_height])
            if np.linalg.norm(error[:2]) < self.align_tol and abs(error[2]) < 0.03:
                self.phase = DESCEND
        if self.phase == DESCEND:
            error = to_cube + np.array([0.0, 0.0, self.grasp_depth])
            xy = np.linalg.norm(error[:2])
            if xy > self.abort_tol:
                self.phase = APPROACH  # cube pushed away: hover again rather than hit it
                error = to_cube + np.array([0.0, 0.0, self.hover_height])
            elif xy < self.align_tol and abs(error[2]) < self.grasp_tol:
                self.phase, self._grasp_count = GRASP, 0
            elif xy > self.align_tol:
                error[2] = 0.0  # re-centre before going lower, so a finger never lands on the cube
        if self.phase == GRASP:
            # Keep servoing on the cube while the fingers close: noise would drag it off.
            self._grasp_count += 1
            action[:3] = self._move(to_cube + np.array([0.0, 0.0, self.grasp_depth]))
            action[6] = 1.0
            if self._grasp_count >= self.grasp_steps:
                self.phase = LIFT
                self._lift_z = float(self.field(obs, "robot0_eef_pos")[2]) + self.lift_height
            return self._for_arm(action)
        if self.phase == LIFT:
            # Hold the cube at a fixed height rather than rising to the arm's limits.
            action[2] = np.clip(self.pos_gain * (self._lift_z - self.field(obs, "robot0_eef_pos")[2]), -1.0, 1.0)
            action[6] = 1.0
            return self._for_arm(action)
        action[:3] = self._move(error)
        action[6] = -1.0
        return self._for_arm(action)

    def _for_arm(self, pose_action: np.ndarray) -> np.ndarray:
        """The 7-dim OSC_POSE action as the arm takes it: position and gripper only on OSC_POSITION."""
        if self.action_space.shape == (4,):
            return pose_action[[0, 1, 2, 6]]
        return pose_action
