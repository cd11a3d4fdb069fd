"""Teleoperation pieces that need no person: key decoding, key maps, and the errors when a device is absent.

The teleoperation itself is tested in a real terminal: tests/pipeline/test_teleop_tmux.py.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from omegaconf import OmegaConf

from o2o.envs import make_env
from o2o.pipeline.config import load_config
from o2o.policies.behavior.factory import make_behavior
from o2o.policies.behavior.human import keymap_for
from o2o.policies.behavior.terminal import decode_keys


def env_cfg(name):
    return OmegaConf.to_container(load_config("collect", [f"env={name}"]).env, resolve=True)


def test_decode_keys():
    assert decode_keys("wa \r\x7f\x1b[A.\x1b") == ["w", "a", "space", "enter", "backspace", "up", ".", "escape"]


def test_keymaps():
    maze = make_env(env_cfg("pointmaze"))
    km = keymap_for(maze)
    assert km.kind == "generic" and km.axes["w"] == (0, 1.0) and km.axes["d"] == (1, -1.0) and km.gripper is None
    cheetah = make_env(env_cfg("halfcheetah"))
    assert len(keymap_for(cheetah).axes) == 12
    # A robosuite arm: end-effector keys, the rotation ones only where the controller takes rotations.
    for controller, n, rot in (("OSC_POSE", 7, True), ("OSC_POSITION", 4, False)):
        cfg = env_cfg("lift")
        cfg["kwargs"]["controller"] = controller
        lift = make_env(cfg)
        try:
            km = keymap_for(lift)
            assert km.kind == "robosuite_arm" and km.gripper == n - 1 and km.axes["r"] == (2, 1.0)
            assert ("z" in km.axes) == rot and len(km.axes) == 2 * (n - 1)
        finally:
            lift.close()


def test_human_without_a_terminal_or_device_says_what_to_do():
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
        pytest.skip("run from a terminal: the teleop would start (tests/pipeline/test_teleop_tmux.py covers it)")
    except OSError:
        pass
    env = make_env(env_cfg("pointmaze"))
    with pytest.raises(RuntimeError, match="behavior=human needs a terminal"):
        make_behavior({"kind": "human", "operator": "x"}, env, env_cfg("pointmaze"))
    with pytest.raises(ValueError, match="device 'joystick' not one of"):
        make_behavior({"kind": "human", "operator": "x", "device": "joystick"}, env, env_cfg("pointmaze"))
    with pytest.raises(ValueError, match="robosuite arm envs only"):
        make_behavior({"kind": "human", "operator": "x", "device": "spacemouse"}, env, env_cfg("pointmaze"))


def test_spacemouse_and_keyboard_report_what_is_missing():
    """No SpaceMouse (nor hidapi) and no X display on this machine: clear errors, no fake device."""
    if importlib.util.find_spec("hid") is not None or os.environ.get("DISPLAY"):
        pytest.skip("a device stack is present here; these errors are for machines without one")
    lift = make_env(env_cfg("lift"))
    with pytest.raises(RuntimeError, match="spacemouse"):
        make_behavior({"kind": "human", "operator": "x", "device": "spacemouse"}, lift, env_cfg("lift"))
    with pytest.raises(RuntimeError, match="keyboard"):
        make_behavior({"kind": "human", "operator": "x", "device": "keyboard"}, lift, env_cfg("lift"))
    lift.close()
