"""``o2o collect behavior=human`` driven as a person would: in a real terminal (tmux), keys sent with send-keys."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from o2o.datasets import EpisodeStore

TMUX = shutil.which("tmux")
pytestmark = [
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)"),
    pytest.mark.slow,  # real terminals and robosuite: outside the fast tier (pytest -m 'not slow'), in the full suite
]
O2O = Path(sys.executable).with_name("o2o")


class Tmux:
    """One detached tmux session running a command; read its screen, type into it."""

    def __init__(self, cwd: Path, command: str):
        self.name = f"o2o-test-{uuid.uuid4().hex[:8]}"
        self.log = cwd / "screen.log"
        # The trailing sleep keeps the pane (and its last screen) after the command exits.
        script = f"cd {shlex.quote(str(cwd))} && {command} 2>stderr.txt; echo EXIT=$?; sleep 60"
        subprocess.run([TMUX, "new-session", "-d", "-s", self.name, "-x", "220", "-y", "50", script], check=True)

    def screen(self) -> str:
        out = subprocess.run(
            [TMUX, "capture-pane", "-p", "-J", "-S", "-200", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        """Poll the screen until ``pattern`` (a regex) shows; fail with the screen otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.screen())
            if m:
                return m
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s; screen:\n{self.screen()}")

    def keys(self, *keys: str, pause: float = 0.15) -> None:
        """Type keys one at a time (tmux key names: Enter, BSpace, Space, or characters)."""
        for k in keys:
            subprocess.run([TMUX, "send-keys", "-t", self.name, k], check=True)
            time.sleep(pause)

    def close(self) -> None:
        subprocess.run([TMUX, "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def tmux(tmp_path):
    sessions = []

    def start(command: str) -> Tmux:
        t = Tmux(tmp_path, command)
        sessions.append(t)
        return t

    yield start
    for t in sessions:
        t.close()


def test_teleop_keep_discard_restart(tmux, tmp_path):
    path = tmp_path / "maze.zarr"
    t = tmux(
        f"{O2O} collect env=pointmaze behavior=human behavior.operator=alice behavior.realtime=false "
        f"collect.episodes=2 dataset.path={path}"
    )
    t.wait_for(r"episode 1 \(seed 0\): you drive", timeout=60)
    t.keys("w", "w", "w", "d", "d")
    t.wait_for(r"ep 1 step 5 ")
    t.keys("Enter")  # keep episode 1
    t.wait_for(r"episode 2 \(seed 1\): you drive")
    t.keys("w", "a", "BSpace")  # discard episode 2
    t.wait_for(r"episode 3 \(seed 2\): you drive")
    t.keys("s", "n")  # restart episode 3 from its seed
    t.wait_for(r"restarted from its seed")
    t.keys("s", "s", ".", "Enter")
    screen = t.wait_for(r"EXIT=(\d+)").group(1)
    assert screen == "0", t.screen()
    text = t.screen()
    assert "episode 2: discarded" in text and "collected 2 episodes, 8 steps" in text
    with EpisodeStore.open(path) as store:
        table = store.episodes_table()
        assert table["length"].tolist() == [5, 3] and table["seed"].tolist() == [0, 2]
        assert set(table["source"]) == {"human"} and table["interventions"].tolist() == [0, 0]
        e0, e1 = store.episode(0), store.episode(1)
        # Step mode: one env step per key; w/s move axis 0, a/d axis 1, by half the range.
        np.testing.assert_array_equal(e0.actions, [[0.5, 0]] * 3 + [[0, -0.5]] * 2)
        np.testing.assert_array_equal(e1.actions, [[-0.5, 0], [-0.5, 0], [0, 0]])
        assert e0.timeouts[-1] and not e0.terminals.any()  # kept early: truncated, not terminal
        assert e0.provenance["params"] == {"operator": "alice", "device": "terminal"}
        assert e0.provenance["policy_id"] == "teleop_terminal"


def test_intervention_on_a_scripted_lift_policy(tmux, tmp_path):
    path = tmp_path / "lift.zarr"
    t = tmux(
        f"{O2O} collect env=lift behavior=human behavior.operator=bob behavior.realtime=false "
        f"behavior.rate_hz=10 'behavior.driver={{kind: scripted}}' collect.episodes=1 dataset.path={path}"
    )
    t.wait_for(r"ep 1 step [4-9] POLICY drives", timeout=90)
    t.keys("i")
    start = int(t.wait_for(r"step (\d+): you drive").group(1))
    t.keys("r", "r", "r")  # end effector up, three steps
    t.keys("Space", ".")  # close the gripper, one step without motion
    t.wait_for(rf"ep 1 step {start + 4} YOU drives .*grip closed")
    t.keys("i")
    t.wait_for(rf"step {start + 4}: the policy drives again")
    t.wait_for(rf"ep 1 step {start + 8} POLICY drives")
    t.keys("Enter")
    assert t.wait_for(r"EXIT=(\d+)").group(1) == "0", t.screen()
    with EpisodeStore.open(path) as store:
        ep = store.episode(0)
        flagged = np.flatnonzero(ep.interventions)
        assert flagged.tolist() == list(range(start, start + 4)), (start, flagged)
        up = [0, 0, 0.5]  # OSC_POSITION: position deltas, then the gripper
        np.testing.assert_array_equal(ep.actions[flagged], [up + [-1]] * 3 + [[0] * 3 + [1]])
        assert ep.provenance["source"] == "scripted"
        assert ep.provenance["params"]["assisted"] == {"operator": "bob", "device": "terminal"}
    info = subprocess.run([str(O2O), "dataset", "info", str(path), "--json"], capture_output=True, text=True)
    summary = json.loads(info.stdout)
    assert summary["human_intervention_steps"] == 4 and summary["sources"]["scripted"]["interventions"] == 4


def test_teleop_moves_a_robosuite_arm(tmux, tmp_path):
    """End-effector keys on Lift (OSC_POSITION): r up, w forward (+x), space closes the gripper."""
    path = tmp_path / "lift.zarr"
    t = tmux(
        f"{O2O} collect env=lift behavior=human behavior.operator=carol behavior.realtime=false "
        f"collect.episodes=1 dataset.path={path}"
    )
    t.wait_for(r"episode 1 \(seed 0\): you drive", timeout=90)
    t.keys("r", "r", "r", "r", "w", "w", "w", "w", "Space", ".", ".", ".")
    t.wait_for(r"ep 1 step 11 YOU drives .*grip closed")
    t.keys("Enter")
    assert t.wait_for(r"EXIT=(\d+)").group(1) == "0", t.screen()
    with EpisodeStore.open(path) as store:
        ep = store.episode(0)
        layout = store.schema.obs_layout
        eef = layout.get(np.concatenate([ep.observations[:1], ep.next_observations()]), "robot0_eef_pos")
        fingers = layout.get(ep.next_observations(), "robot0_gripper_qpos")
        assert len(ep) == 11 and ep.provenance["source"] == "human"
        assert eef[4, 2] - eef[0, 2] > 0.01, eef[:5]  # four steps up (0.025 m commanded each; the arm lags)
        assert eef[8, 0] - eef[4, 0] > 0.01, eef[4:9]  # four steps forward
        assert ep.actions[8:, -1].tolist() == [1, 1, 1] and ep.actions[:8, -1].tolist() == [-1] * 8
        assert np.abs(fingers[-1]).sum() < np.abs(fingers[7]).sum(), "the fingers close"


def test_realtime_teleop_holds_a_key_then_stops(tmux, tmp_path):
    """Real-time mode: the env steps at rate_hz on its own; a key press moves its axis for hold_s."""
    path = tmp_path / "maze.zarr"
    t = tmux(
        f"{O2O} collect env=pointmaze behavior=human behavior.operator=dan behavior.rate_hz=20 "
        f"behavior.hold_s=0.3 collect.episodes=1 dataset.path={path}"
    )
    t.wait_for(r"ep 1 step [1-9]\d* YOU drives", timeout=60)  # steps advance with no key pressed
    t.keys("w")
    time.sleep(1.0)
    t.keys("Enter")
    assert t.wait_for(r"EXIT=(\d+)").group(1) == "0", t.screen()
    with EpisodeStore.open(path) as store:
        a = store.episode(0).actions
        pushed = np.flatnonzero(a[:, 0] == 0.5)
        # One press held ~0.3 s at 20 Hz: a contiguous run of about 6 steps, idle before and after.
        assert 3 <= len(pushed) <= 9 and np.all(np.diff(pushed) == 1), a[:, 0]
        assert pushed[0] > 0 and pushed[-1] < len(a) - 3 and not a[:, 1].any()
