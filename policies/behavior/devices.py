"""robosuite's own input devices (Keyboard, SpaceMouse) as movement sources for ``behavior=human``.

``behavior.device=spacemouse`` (or ``keyboard``) reads end-effector motion from robosuite's
device driver instead of the terminal's axis keys; the terminal still supplies the control
keys (keep, discard, restart, take over, quit). Requirements, as robosuite has them:

- ``keyboard``: robosuite's ``Keyboard`` listens through pynput, which needs a desktop
  session (an X display); in a plain terminal use ``device=terminal`` (the default).
- ``spacemouse``: ``pip install hidapi`` and a 3Dconnexion SpaceMouse plugged in
  (robosuite's ``SpaceMouse`` finds it by vendor/product id).

Both drive robosuite arm envs only (they need the simulated robot to map motion onto).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

DEVICES = ("terminal", "keyboard", "spacemouse")


class RobosuiteDevice:
    """Wraps a ``robosuite.devices.Device``: per step, normalised pose deltas and the gripper command."""

    def __init__(self, env: gym.Env, kind: str, pos_sensitivity: float = 1.0, rot_sensitivity: float = 1.0):
        sim = getattr(env.unwrapped, "sim_env", None)
        if sim is None:
            raise ValueError(
                f"behavior.device={kind}: robosuite devices drive robosuite arm envs only (e.g. env=lift);"
                " use device=terminal"
            )
        self.kind = kind
        self.device = _open(kind, sim, pos_sensitivity, rot_sensitivity)
        self.device.start_control()
        self._grip = -1.0

    def axes(self) -> dict[int, float]:
        """The 6 arm deltas (x, y, z, rot x, rot y, rot z) in [-1, 1] from the device's current input."""
        ac = self.device.input2action()
        if ac is None:  # the device's own reset button
            from o2o.policies.behavior.base import RestartEpisode

            raise RestartEpisode()
        arm = self.device.active_arm
        delta = np.asarray(ac[f"{arm}_delta"], np.float64)
        grip = np.asarray(ac.get(f"{arm}_gripper", [self._grip]), np.float64).ravel()
        self._grip = float(grip[0]) if grip.size else self._grip
        return {i: float(v) for i, v in enumerate(delta[:6])}

    def gripper(self) -> float:
        """The gripper command of the last read: -1 open, +1 closed."""
        return self._grip

    def close(self) -> None:
        """Stop the device's listener thread, if it has one."""
        listener = getattr(self.device, "listener", None)
        if listener is not None:
            listener.stop()


def _open(kind: str, sim: Any, pos: float, rot: float):
    if kind == "keyboard":
        try:
            from robosuite.devices import Keyboard
        except Exception as e:  # pynput raises ImportError or assorted X errors without a display
            raise RuntimeError(
                f"behavior.device=keyboard: robosuite's Keyboard cannot start ({type(e).__name__}: "
                f"{e}); it needs a desktop session (X display). In a terminal use device=terminal"
            )
        return Keyboard(env=sim, pos_sensitivity=pos, rot_sensitivity=rot)
    if kind == "spacemouse":
        try:
            import hid  # noqa: F401  (robosuite's SpaceMouse imports it lazily and only logs when missing)
        except ImportError:
            raise RuntimeError(
                "behavior.device=spacemouse: the 'hid' module is missing; pip install hidapi "
                "(and plug in a 3Dconnexion SpaceMouse)"
            ) from None
        from robosuite.devices import SpaceMouse

        try:
            return SpaceMouse(env=sim, pos_sensitivity=pos, rot_sensitivity=rot)
        except Exception as e:
            raise RuntimeError(f"behavior.device=spacemouse: no SpaceMouse could be opened ({type(e).__name__}: {e})")
    raise ValueError(f"behavior.device {kind!r} not one of {DEVICES}")
