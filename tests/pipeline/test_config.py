"""Composing configs: every config of configs/ composes for every command; a key no config declares
is refused by name (with the nearest known keys), except below the open sections."""

from __future__ import annotations

import pytest
from omegaconf import DictConfig

from o2o.pipeline.cli import main
from o2o.pipeline.config import OPEN_SECTIONS, UnknownConfigKeyError, command_groups, group_options, load_config, plain

COMMANDS = ("run", "collect", "pretrain", "evaluate", "export")
REQUIRED = {"export": ["ckpt=x.ckpt"]}  # keys a command needs before it composes


def compose(name: str, *overrides: str) -> DictConfig:
    return load_config(name, [*REQUIRED.get(name, []), *overrides])


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_every_group_of_every_command_composes(name):
    for cfg in every_composition(name):
        assert cfg.keys()


def every_composition(name: str):
    """``name``'s config with each option of each of its groups in turn, and with each preset."""
    groups = command_groups(name)
    assert groups, name
    for group, default, key in groups:
        options = group_options(group)
        assert default in options, (name, group)
        for option in options:
            yield compose(name, f"{key}={option}")
    if any(g.group == "env" for g in groups):  # presets choose an env (the room preset overrides /env)
        for preset in group_options("experiment"):
            yield compose(name, f"+experiment={preset}")


def _leaves(node, prefix=""):
    """The dotted paths of ``node``'s values (a list counts as one value)."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            yield from _leaves(node._get_node(k), f"{prefix}{k}.")
    else:
        yield prefix.rstrip(".")


@pytest.mark.parametrize("preset", group_options("experiment"))
def test_experiment_presets_only_set_keys_the_run_declares(preset):
    """A preset is a config file, not an override: a typo in it would pass the override check."""
    declared = set().union(
        *(_leaves(compose("run", f"{g.override}={o}")) for g in command_groups("run") for o in group_options(g.group))
    )
    set_by_preset = set(_leaves(compose("run", f"+experiment={preset}")))
    assert set_by_preset - declared == set()


@pytest.mark.parametrize(
    "name, override, message",
    [
        (
            "pretrain",
            "+trainer.max_step=10",
            r"unknown config key 'trainer.max_step' \(from \+trainer.max_step=10\); did you mean 'trainer.max_steps'\? "
            r"known keys of trainer: accelerator, .*max_steps",
        ),
        ("run", "+trainer.max_step=10", r"unknown config key 'trainer.max_step'.*did you mean 'trainer.max_steps'"),
        (
            "run",
            "++finetune.stepz=10",
            r"unknown config key 'finetune.stepz' \(from \+\+finetune.stepz=10\); did you "
            r"mean 'finetune.steps'\? known keys of finetune:",
        ),
        ("collect", "+collect.episode=5", r"'collect.episode'.*did you mean 'collect.episodes'"),
        ("evaluate", "+sim.episode=5", r"'sim.episode'.*did you mean 'sim.episodes'"),
        ("export", "+closed_loop.episode=5", r"'closed_loop.episode'.*did you mean 'closed_loop.episodes'"),
        (
            "pretrain",
            "+traner.max_steps=5",
            r"unknown config key 'traner'.*did you mean 'trainer'\? known top-level keys "
            r"of configs/pretrain.yaml: algo, ",
        ),
        ("pretrain", "+algo.expectil=0.9", r"'algo.expectil'.*did you mean 'algo.expectile'"),
        ("collect", "+behavior.noise_sd=0.1", r"'behavior.noise_sd'.*did you mean 'behavior.noise_std'"),
        (
            "pretrain",
            "+data.obs_clip.x=1",
            r"config key 'data.obs_clip.x' is not declared \(from \+data.obs_clip.x=1\): 'data.obs_clip' is a value "
            r"\(10.0\), not a section",
        ),
        # Without the `+`, Hydra refuses the key but suggests adding it; o2o names the near keys instead.
        (
            "pretrain",
            "trainer.max_step=10",
            r"unknown config key 'trainer.max_step' \(from trainer.max_step=10\); did you "
            r"mean 'trainer.max_steps'\?",
        ),
        ("pretrain", "trainer={max_step: 10}", r"unknown config key 'trainer.max_step'"),
        ("pretrain", "++trainer={max_step: 10}", r"unknown config key 'trainer.max_step'"),
    ],
)
def test_a_key_no_config_declares_is_refused_by_name(name, override, message):
    with pytest.raises(UnknownConfigKeyError, match=message):
        compose(name, override)


def test_open_sections_and_keys_the_reading_class_takes_are_accepted():
    cfg = compose(
        "run",
        "+env.kwargs.extra_arg=1",
        "+finetune.algo.cql_alpha=1.0",
        "+finetune.algo_overrides.sac.tau=0.01",
        "+algo.n_critics=3",
        "++trainer.max_steps=7",
        "+experiment=room",
    )
    assert cfg.env.kwargs.extra_arg == 1 and cfg.finetune.algo.cql_alpha == 1.0 and cfg.algo.n_critics == 3
    assert cfg.trainer.max_steps == 7 and cfg.env.id == "Open"
    assert set(OPEN_SECTIONS) == {"env.kwargs", "finetune.algo", "finetune.algo_overrides"}
    assert compose("collect", "+behavior.policy_id=mine").behavior.policy_id == "mine"  # a scripted behaviour's key
    # A key the behaviour kind does not take is refused, although another kind takes it.
    with pytest.raises(UnknownConfigKeyError, match=r"'behavior.noise_std'.* known keys of behavior: kind, policy_id"):
        compose("collect", "behavior=random", "+behavior.noise_std=0.3")


@pytest.mark.parametrize("algo", group_options("algo"))
def test_the_algo_section_holds_every_key_of_its_class_with_the_class_defaults(algo):
    """The algorithm's config dataclass is the one source of its defaults: the YAML sets only what differs."""
    from o2o.policies.algos.base import resolve_algorithm

    cfg = compose("pretrain", f"algo={algo}", "trainer.seed=5")
    cls = resolve_algorithm(cfg.algo.cls)
    assert list(cfg.algo) == cls.config.keys()
    assert cfg.algo.name == algo and cfg.algo.seed == 5  # the seed follows the trainer's unless set
    differs = {k: v for k, v in plain(cfg.algo).items() if v != cls.config.defaults()[k]}
    assert set(differs) <= {"name", "cls", "seed", "top_fraction"}, differs  # bc_filtered: top_fraction 0.1
    # A class key is set like any declared key; the older `+algo.<key>` spelling still works.
    assert compose("pretrain", f"algo={algo}", "algo.log_every=7").algo.log_every == 7
    assert compose("pretrain", f"algo={algo}", "+algo.log_every=8").algo.log_every == 8


def test_cfg_prints_every_algorithm_key(capsys):
    assert main(["pretrain", "algo=cql", "--cfg"]) == 0
    out = capsys.readouterr().out
    for line in (
        "name: cql",
        "cls: o2o.policies.algos.cql.CQL",
        "n_critics: 2",
        "actor_kind: tanh_gaussian",
        "critic_layer_norm: false",
        "cql_alpha: 5.0",
        "seed: 0",
    ):
        assert f"\n  {line}\n" in out, line


def test_the_cli_refuses_the_typo_in_one_line_and_exits_2(capsys):
    assert main(["pretrain", "+trainer.max_step=10", "--cfg"]) == 2
    out = capsys.readouterr()
    assert "max_steps: 10000" not in out.out  # nothing composed was printed
    err = out.err.strip()
    assert err.startswith("o2o pretrain: error: UnknownConfigKeyError: unknown config key 'trainer.max_step'")
    assert "did you mean 'trainer.max_steps'?" in err and len(err.splitlines()) == 1
