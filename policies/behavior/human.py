"""A person as the behaviour policy: terminal teleoperation, and taking over from a policy.

``behavior=human`` drives any o2o env from the keyboard of the terminal ``o2o collect``
runs in. Each action axis has a key pair (:func:`keymap_for`); a robosuite arm on
``OSC_POSE`` gets end-effector keys instead (w/s x, a/d y, r/f z, z/x t/g c/v rotation
about x/y/z, space opens/closes the gripper), one on ``OSC_POSITION`` the position keys and
space. A live status line shows episode, step,
reward, return, success and who drives. Control keys:

======================  =========================================================
Enter or ``k``          finish the episode and keep it (last step marked truncated)
Backspace or ``b``      discard the episode, go on with the next seed
``n``                   restart the episode from the same seed (discarding it)
``i``                   hand control to the human / back to the driving policy
``q``                   stop collecting (kept episodes are committed)
``.``                   one step with no movement (step mode)
``[`` / ``]``           smaller / larger steps per key
======================  =========================================================

With a ``driver`` (a behaviour config: scripted, learned...) the policy drives and the
human intervenes with ``i``; the steps the human drove are flagged per step (the store's
``interventions``), and the episode keeps the driver's source, with the operator in its
params. Without a driver every step is the human's: source ``human``, no step flagged
(an intervention is an override of a policy).

``realtime: true`` steps at ``rate_hz`` with each key press moving its axis for
``hold_s`` (terminals repeat a held key); ``realtime: false`` (step mode) takes one step
per movement key. A driver always runs at ``rate_hz`` so the human can watch and react.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from o2o.policies.behavior.base import (
    BehaviorPolicy,
    DiscardEpisode,
    KeepEpisode,
    Provenance,
    RestartEpisode,
    StopCollection,
)

GENERIC_PAIRS = [
    ("w", "s"),
    ("a", "d"),
    ("r", "f"),
    ("z", "x"),
    ("t", "g"),
    ("c", "v"),
    ("y", "h"),
    ("u", "j"),
    ("o", "l"),
    ("1", "2"),
    ("3", "4"),
    ("5", "6"),
    ("7", "8"),
    ("9", "0"),
]
ARM_AXES = [
    ("w", "s", "x"),
    ("a", "d", "y"),
    ("r", "f", "z"),
    ("z", "x", "rot x"),
    ("t", "g", "rot y"),
    ("c", "v", "rot z"),
]
CONTROL = {
    "enter": "keep",
    "k": "keep",
    "backspace": "discard",
    "b": "discard",
    "n": "restart",
    "i": "intervene",
    "q": "quit",
    ".": "noop",
    "[": "slower",
    "]": "faster",
}


@dataclass
class KeyMap:
    """Which key moves which action axis, and which key toggles the gripper (if any)."""

    axes: dict[str, tuple[int, float]]  # key -> (action index, +1 or -1)
    labels: list[str]  # one help entry per axis pair
    gripper: int | None = None  # action index toggled by space between -1 (open) and +1 (closed)
    kind: str = "generic"
    keys: list[str] = field(default_factory=list)

    def help(self) -> str:
        grip = ["space gripper"] if self.gripper is not None else []
        return (
            "  ".join(self.labels + grip) + "  | Enter keep  Backspace discard  n restart  i take over/hand back"
            "  q quit  . no-op  [ ] step size"
        )


def keymap_for(env: gym.Env) -> KeyMap:
    """End-effector keys for a robosuite arm on OSC_POSE (6 pose deltas + gripper) or OSC_POSITION (3 position
    deltas + gripper), else a pair per axis."""
    n = int(np.prod(env.action_space.shape))
    ctrl = getattr(env.unwrapped, "controller_type", None)
    arm = {("OSC_POSE", 7): ARM_AXES, ("OSC_POSITION", 4): ARM_AXES[:3]}.get((ctrl, n))
    if arm is not None:
        axes = {}
        for i, (pos, neg, _) in enumerate(arm):
            axes[pos], axes[neg] = (i, 1.0), (i, -1.0)
        return KeyMap(axes, [f"{p}/{m} {name}" for p, m, name in arm], gripper=n - 1, kind="robosuite_arm")
    if n > len(GENERIC_PAIRS):
        raise ValueError(
            f"behavior=human: the env has {n} action dimensions, the terminal keymap covers "
            f"{len(GENERIC_PAIRS)}; drive it with a driver policy and intervene, or a device"
        )
    axes = {}
    for i in range(n):
        pos, neg = GENERIC_PAIRS[i]
        axes[pos], axes[neg] = (i, 1.0), (i, -1.0)
    return KeyMap(axes, [f"{GENERIC_PAIRS[i][0]}/{GENERIC_PAIRS[i][1]} a{i}" for i in range(n)])


class HumanPolicy(BehaviorPolicy):
    """Teleoperation from a :class:`~o2o.policies.behavior.terminal.Terminal` (or any object with
    ``read(timeout)``, ``wait(seconds)``, ``status(text)``, ``message(text)``, ``close()``).

    ``device`` (optional) supplies movement instead of the terminal's axis keys (robosuite
    devices, see :mod:`o2o.policies.behavior.devices`); the terminal still gives the control keys.
    """

    def __init__(
        self,
        env: gym.Env,
        terminal: Any,
        operator: str,
        driver: BehaviorPolicy | None = None,
        realtime: bool = True,
        rate_hz: float = 20.0,
        hold_s: float = 0.15,
        step: float = 0.5,
        policy_id: str | None = None,
        device: Any = None,
        device_name: str = "terminal",
    ):
        if not operator:
            raise ValueError("behavior=human: set behavior.operator (who is demonstrating; stored with every episode)")
        space = env.action_space
        self.space = space
        self.keymap = keymap_for(env)
        self.term = terminal
        self.operator = str(operator)
        self.driver = driver
        self.realtime = bool(realtime)
        self.period = 1.0 / float(rate_hz)
        self.hold_s = float(hold_s)
        self.step_size = float(step)
        self.device = device
        self.device_name = device_name
        self._policy_id = policy_id or f"teleop_{device_name}"
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        finite = np.isfinite(low) & np.isfinite(high)
        self._center = np.where(finite, (low + high) / 2, 0.0)
        self._half = np.where(finite, (high - low) / 2, 1.0)
        try:
            self._layout = env.get_wrapper_attr("obs_layout")
        except AttributeError:
            self._layout = None
        self.episode = 0
        self._human = driver is None
        self._pending: list[str] = []
        self.term.message(
            f"o2o teleop ({self.keymap.kind}, {device_name}, operator {self.operator}): " + self.keymap.help()
        )

    # -- the BehaviorPolicy interface -------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """A new episode: the driver (if any) drives again; the gripper opens."""
        self.episode += 1
        self.t, self.ret, self.reward, self.success = 0, 0.0, 0.0, False
        self._held: dict[int, tuple[float, float]] = {}
        self._grip = -1.0
        self._human = self.driver is None
        self._last_tick = time.monotonic()
        if self.driver is not None:
            self.driver.reset(seed=seed)
        self.term.message(
            f"episode {self.episode} (seed {seed}): "
            + ("you drive" if self._human else "the policy drives; press i to take over")
        )

    @property
    def human_in_control(self) -> bool:  # type: ignore[override]
        """True on steps where the human overrides the driving policy (never without a driver)."""
        return self.driver is not None and self._human

    @property
    def provenance(self) -> Provenance:
        """Source ``human`` for teleoperation; the driver's provenance (plus the operator) when assisting."""
        params = {"operator": self.operator, "device": self.device_name}
        if self.driver is None:
            return Provenance("human", self._policy_id, "1", params)
        p = self.driver.provenance
        return Provenance(p.source, p.policy_id, p.policy_version, dict(p.params, assisted=params))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The next action: waits for keys (or the next tick), handles control keys, then moves."""
        self._obs = obs
        while True:
            if not self._human:
                self._control(self._take(self.term.wait(self._until_tick())))
                if not self._human:  # still the policy's turn (the human may have just taken over)
                    self._last_tick = time.monotonic()
                    return np.asarray(self.driver.act(obs), dtype=self.space.dtype)
            elif self.realtime:
                self._control(self._take(self.term.wait(self._until_tick())))
                if self._human:
                    self._last_tick = time.monotonic()
                    return self._action(self._device_or_held())
            else:
                keys = self._take(self.term.read(None if not self._pending else 0.0))
                move = self._control(keys, one_move=True)
                if move is not None and self._human:
                    return self._action(move)

    def observe(self, obs: np.ndarray, reward: float, terminated: bool, truncated: bool, info: dict) -> None:
        """Update and redraw the status line after each step."""
        self._obs = obs
        self.t += 1
        self.reward, self.ret = float(reward), self.ret + float(reward)
        self.success = self.success or bool(info.get("is_success", False))
        self._draw()
        if terminated or truncated:
            self.term.message(
                f"episode {self.episode} ended by the env after {self.t} steps "
                f"(return {self.ret:.2f}, success {self.success}): kept"
            )

    def close(self) -> None:
        """Restore the terminal and release the device and the driver."""
        for part in (self.driver, self.device):
            if part is not None and hasattr(part, "close"):
                part.close()
        self.term.close()

    # -- keys ---------------------------------------------------------------------------------------
    def _take(self, keys: list[str]) -> list[str]:
        keys, self._pending = self._pending + keys, []
        return keys

    def _until_tick(self) -> float:
        return max(0.0, self._last_tick + self.period - time.monotonic())

    def _control(self, keys: list[str], one_move: bool = False):
        """Apply control keys; movement keys hold (real time) or return one move (step mode)."""
        for j, key in enumerate(keys):
            what = CONTROL.get(key)
            if what == "keep":
                self.term.message(f"episode {self.episode}: kept ({self.t} steps, return {self.ret:.2f})")
                raise KeepEpisode()
            if what == "discard":
                self.term.message(f"episode {self.episode}: discarded")
                raise DiscardEpisode()
            if what == "restart":
                self.term.message(f"episode {self.episode}: restarted from its seed")
                self.episode -= 1
                raise RestartEpisode()
            if what == "quit":
                self.term.message("stopping: kept episodes are committed")
                raise StopCollection()
            if what == "intervene" and self.driver is not None:
                self._human = not self._human
                self.term.message(
                    f"step {self.t}: " + ("you drive (i hands back)" if self._human else "the policy drives again")
                )
            elif what in ("slower", "faster"):
                self.step_size = float(np.clip(self.step_size * (0.5 if what == "slower" else 2.0), 0.0625, 1.0))
            elif key == "space" and self.keymap.gripper is not None:
                self._grip = -self._grip
            elif (key in self.keymap.axes or what == "noop") and self._human:
                if one_move:
                    self._pending = keys[j + 1 :]
                    return {} if what == "noop" else {self.keymap.axes[key][0]: self.keymap.axes[key][1]}
                if key in self.keymap.axes:
                    axis, sign = self.keymap.axes[key]
                    self._held[axis] = (sign, time.monotonic() + self.hold_s)
        self._draw()
        return None

    def _device_or_held(self) -> dict[int, float]:
        if self.device is not None:
            return self.device.axes()
        now = time.monotonic()
        return {axis: sign for axis, (sign, until) in self._held.items() if until > now}

    def _action(self, move: dict[int, float]) -> np.ndarray:
        a = self._center.copy()
        for axis, value in move.items():
            a[axis] += value * self.step_size * self._half[axis]
        if self.keymap.gripper is not None:
            a[self.keymap.gripper] = self._grip if self.device is None else self.device.gripper()
        return np.clip(a, self.space.low, self.space.high).astype(self.space.dtype)

    def _draw(self) -> None:
        # Most useful first: a narrow terminal cuts the line's end.
        text = (
            f"ep {self.episode} step {self.t} {'YOU' if self._human else 'POLICY'} drives | r {self.reward:+.3f} "
            f"return {self.ret:.2f} success {'yes' if self.success else 'no'}"
        )
        if self.keymap.gripper is not None:
            text += f" | grip {'closed' if self._grip > 0 else 'open'}"
        obs = getattr(self, "_obs", None)
        if self._layout is not None and "robot0_eef_pos" in self._layout and obs is not None:
            text += " eef " + " ".join(f"{v:+.3f}" for v in self._layout.get(obs, "robot0_eef_pos"))
        self.term.status(
            text + f" | step {self.step_size:g} | Enter keep, Bksp discard, n restart, i take over, q quit"
        )
