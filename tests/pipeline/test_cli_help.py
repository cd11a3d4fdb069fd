"""``o2o <command> --help``: the config groups with their options, the main keys with their defaults
and meaning, and examples, generated from the config package."""

from __future__ import annotations

import pytest

from o2o.pipeline.cli import main
from o2o.pipeline.cli_help import MAIN_KEYS, main_keys, yaml_comments
from o2o.pipeline.config import command_groups, group_options


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_run_help_lists_groups_with_options_and_defaults_main_keys_and_examples(capsys):
    out = help_text(capsys, "run")
    assert (
        "algo       the offline RL algorithm: awac, bc, bc_filtered, calql, combo, cql, iql*, rlpd, sac, td3bc, wsrl"
        in out
    )
    assert "env        the simulated task: halfcheetah, hopper, lift*, pointmaze, reacher" in out
    assert "experiment whole-run presets, added with +experiment=NAME: lift_poor, room, room_poor" in out
    assert "trainer.max_steps=3000" in out and "finetune.steps=3000" in out and "env steps in all" in out
    assert "run_dir=runs/${now:%Y%m%d-%H%M%S}" in out  # as written, not resolved to today's date
    assert "examples:\n  o2o run +experiment=room" in out
    assert "below env.kwargs, finetune.algo, finetune.algo_overrides" in out


@pytest.mark.parametrize("name", sorted(MAIN_KEYS))
def test_every_command_s_help_shows_every_group_option_and_each_main_key_with_a_meaning(capsys, name):
    out = help_text(capsys, name)
    for g in command_groups(name):
        options = ", ".join(o + ("*" if o == g.default else "") for o in group_options(g.group))
        assert f"{g.group:<11}" in out and options in out, (name, g.group)
    for key, default, meaning in main_keys(name):  # (a key the config lacks is a KeyError there)
        assert key in MAIN_KEYS[name] and meaning, (name, key)  # every main key says what it is
        assert f"  {key}={default}" in out
    assert f"examples:\n  o2o {name}" in out


def test_top_level_help_has_examples(capsys):
    out = help_text(capsys)
    assert "examples:" in out and "o2o run +experiment=room" in out and "o2o <command> --help" in out


def test_comments_are_read_per_dotted_key():
    text = "a: 1  # top\nb:\n  c: 2   # nested\n  d: {x: 1}\n# block\ne: 'x'  # last\n"
    assert yaml_comments(text, "g.") == {"g.a": "top", "g.b.c": "nested", "g.e": "last"}
