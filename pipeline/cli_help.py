"""What ``o2o <command> --help`` says below the usage: the command's config groups with their
options (from the config package, so a new option shows up by itself), its main keys with their
defaults and meaning (from the YAML comments, or :data:`MEANINGS` where a key has none), and
examples. Built only when help is asked for: it composes the command's config.
"""

from __future__ import annotations

import re
from typing import Any

# No Hydra or OmegaConf at import time: `o2o serve` builds the same parser on a robot computer
# that has neither (tests/deploy block them); they load when help is asked for.

GROUP_MEANINGS = {
    "env": "the simulated task",
    "behavior": "the behaviour policy that acts",
    "dataset": "where the growing dataset lives",
    "algo": "the offline RL algorithm",
    "trainer": "Lightning trainer settings",
    "ope": "off-policy evaluation settings",
    "gate": "evidence required before going online",
    "finetune": "online finetuning after the gate",
    "export": "export, parity check and runtime guards",
    "pipeline": "which stages run",
    "experiment": "whole-run presets, added with +experiment=NAME",
}

# Each command's main keys, in the order shown. `o2o <command> --cfg` prints all of them.
MAIN_KEYS = {
    "run": [
        "pipeline.stages",
        "collect.behaviors",
        "collect.tasks",
        "dataset.path",
        "trainer.max_steps",
        "eval.every",
        "evaluation.episodes",
        "finetune.steps",
        "finetune.warmup_steps",
        "pretrain.init",
        "run_dir",
        "state_dir",
        "collect.progress",
        "trainer.progress",
        "evaluation.progress",
        "finetune.progress",
    ],
    "collect": [
        "collect.episodes",
        "collect.seed",
        "collect.tasks",
        "dataset.path",
        "dataset.action_bounds",
        "behavior.noise_std",
        "behavior.policy_id",
        "collect.commit_every_s",
        "collect.progress",
    ],
    "pretrain": [
        "trainer.max_steps",
        "trainer.accelerator",
        "trainer.devices",
        "trainer.precision",
        "algo.batch_size",
        "algo.hidden",
        "data.sources",
        "data.obs_clip",
        "eval.enabled",
        "eval.every",
        "eval.episodes",
        "checkpoint.monitor",
        "init_from",
        "trainer.ckpt_path",
        "dataset.path",
        "run_dir",
        "trainer.progress",
    ],
    "evaluate": [
        "ckpts",
        "dataset.path",
        "data.sources",
        "ope.fqe_updates",
        "ope.bootstrap",
        "ope.fqe_refits",
        "sim.enabled",
        "sim.episodes",
        "device",
        "output",
        "progress",
    ],
    "export": [
        "ckpt",
        "out",
        "tolerance",
        "parity.observations",
        "closed_loop.episodes",
        "closed_loop.max_success_drop",
        "runtime.max_delta",
        "runtime.safe_action",
        "runtime.deadline_s",
    ],
}

# Meanings of main keys whose YAML line carries no comment (or one too long or too terse for help);
# "<command>:<key>" for one command only.
MEANINGS = {
    "pretrain:run_dir": "this run's folder: checkpoints/, tb/, csv/, config.yaml, summary.json",
    "trainer.progress": "progress: updates, updates/s, ETA, losses",
    "dataset.action_bounds": "actions outside the env's action space: error (refuse the episode) | clip | ignore",
    "parity.observations": "recorded observations the exports must reproduce the torch policy on",
    "closed_loop.episodes": "episodes of the export through the runtime vs the trained policy (0: skip)",
    "pipeline.stages": "stages to run; their order is derived from what each reads and writes",
    "collect.behaviors": "behaviours (configs/behavior/ names or nodes), episode counts and tasks, appended in turn",
    "collect.tasks": "reset options, one drawn per episode from its seed and recorded as its task (null: none)",
    "dataset.path": "the growing dataset: every run appends to it (kept outside run folders)",
    "trainer.max_steps": "offline gradient updates (one update steps every network once)",
    "trainer.precision": "32-true | bf16-mixed | 16-mixed | auto (bf16 where the hardware computes it natively)",
    "trainer.devices": ">1 with trainer.strategy=ddp for multi-GPU",
    "eval.every": "updates between evaluations in simulation",
    "eval.episodes": "episodes per periodic evaluation",
    "eval.enabled": "periodic evaluation in simulation (false: the best checkpoint by FQE)",
    "evaluation.episodes": "episodes judging the chosen checkpoint, on seeds that did not choose it",
    "checkpoint.monitor": "the evaluation metric that picks the best checkpoint",
    "init_from": "warm start from this checkpoint of the same algorithm",
    "algo.batch_size": "transitions per update",
    "algo.hidden": "hidden layer sizes of every network",
    "behavior.noise_std": "Gaussian action noise, in half action ranges (scripted, noisy, learned)",
    "collect.commit_every_s": "commit buffered episodes at least this often (a crash loses at most this)",
    "ope.fqe_updates": "FQE updates per checkpoint",
    "ope.bootstrap": "episode resamples for each estimate's confidence interval (0: none)",
    "ope.fqe_refits": "bootstrapped FQE: refits on resampled episodes (0: none)",
    "sim.enabled": "simulate each checkpoint too (false when there is no simulator)",
    "sim.episodes": "simulated episodes per checkpoint",
    "output": "the JSON report with every figure",
}

EXAMPLES = {
    None: [
        "o2o run +experiment=room                  # the whole workflow on the fast built-in task (~1 min)",
        "o2o run                                   # the default: robosuite Lift (minutes)",
        "o2o collect env=lift behavior=noisy collect.episodes=50",
        "o2o pretrain env=pointmaze algo=cql trainer.max_steps=20000",
        "o2o <command> --help                      # its config groups, main keys and examples",
    ],
    "run": [
        "o2o run +experiment=room                  # the fast built-in task (point-maze room)",
        "o2o run                                   # the default: robosuite Lift",
        "o2o run env=reacher                       # any env is one override away",
        "o2o run --dry-run                         # the plan: which stages run, which are unchanged",
        "o2o run algo=cql                          # reruns pretraining and what follows; collect is skipped",
        "o2o run 'collect.behaviors=[{behavior: random, episodes: 20}]'   # more data: appends, retrains",
        "o2o run --force pretrain                  # rerun a stage although nothing changed",
        "o2o run pipeline.stages=[collect,pretrain,evaluate,report]       # a subset",
        "o2o run +experiment=room run_dir=/tmp/r state_dir=/tmp/r/.state dataset.path=/tmp/room.zarr",
    ],
    "collect": [
        "o2o collect env=lift behavior=scripted collect.episodes=50 dataset.path=data/lift.zarr",
        "o2o collect env=lift behavior=noisy collect.episodes=50      # appends to the same dataset",
        "o2o collect env=pointmaze behavior=mixed collect.episodes=200",
        "o2o collect env=lift behavior=human behavior.operator=alice collect.episodes=5",
        "o2o collect env=pointmaze behavior=learned behavior.checkpoint=exports/maze/policy.onnx",
    ],
    "pretrain": [
        "o2o pretrain env=pointmaze algo=iql trainer.max_steps=20000",
        "o2o pretrain env=lift algo=cql data.sources=[scripted] eval.every=2000 eval.num_envs=2",
        "o2o pretrain env=lift algo=iql trainer.ckpt_path=runs/pretrain/iql-.../checkpoints/last.ckpt  # resume",
        "o2o pretrain env=pointmaze algo=iql eval.enabled=false     # best checkpoint by FQE, no simulator",
    ],
    "evaluate": [
        "o2o evaluate env=pointmaze ckpts=[runs/pretrain/iql-a/checkpoints,runs/pretrain/cql-b/checkpoints/last.ckpt]",
        "o2o evaluate env=lift ckpts=[...] sim.enabled=false ope.fqe_updates=50000    # no simulator: OPE only",
    ],
    "export": [
        "o2o export ckpt=runs/pretrain/iql-20261123-120000/checkpoints/best-3000.ckpt",
        "o2o export ckpt=runs/pretrain/iql-20261123-120000        # a run folder: its best checkpoint",
        "o2o export ckpt=... out=exports/lift-iql runtime.max_delta=0.2 closed_loop.episodes=20",
    ],
}


def yaml_comments(text: str, prefix: str = "") -> dict[str, str]:
    """``{dotted key: trailing comment}`` of the block-style mapping keys in YAML ``text``."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    for line in text.splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        comment = re.search(r"\s#\s?(.*)$", rest)
        if comment:
            out[prefix + path] = comment.group(1).strip()
    return out


def key_comments(name: str) -> dict[str, str]:
    """Trailing comments of every key of command ``name``: its own YAML over its groups' defaults."""
    from o2o.pipeline.config import command_groups, config_root

    root = config_root()
    out: dict[str, str] = {}
    for g in command_groups(name):
        text = root.joinpath(g.group).joinpath(f"{g.default}.yaml").read_text()
        out.update(yaml_comments(text, "" if "@" in g.override else f"{g.group}."))
    own = yaml_comments(root.joinpath(f"{name}.yaml").read_text())
    return {**out, **own}


def _inline(v: Any) -> str:
    """A default as it would be typed on the command line (YAML flow style)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if v == "???":
        return "(required)"
    if isinstance(v, list):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_inline(x)}" for k, x in v.items()) + "}"
    return str(v)


def _select(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def main_keys(name: str) -> list[tuple[str, str, str]]:
    """``(key, default, meaning)`` for each of the command's :data:`MAIN_KEYS`."""
    from omegaconf import OmegaConf

    from o2o.pipeline.config import load_config

    tree = OmegaConf.to_container(load_config(name), resolve=False)  # defaults as written: ${now:...} unresolved
    comments = key_comments(name)
    return [
        (k, _inline(_select(tree, k)), MEANINGS.get(f"{name}:{k}") or MEANINGS.get(k) or comments.get(k, ""))
        for k in MAIN_KEYS[name]
    ]


def command_epilog(name: str | None) -> str:
    """The text under ``o2o <name> --help`` (``None``: under ``o2o --help``)."""
    from o2o.pipeline.config import OPEN_SECTIONS, command_groups, group_options

    lines: list[str] = []
    if name is not None:
        groups = [(g.group, g.default) for g in command_groups(name)]
        if any(g == "env" for g, _ in groups):
            groups.append(("experiment", None))
        lines.append("config groups (group=option; * marks the default):")
        for group, default in groups:
            options = ", ".join(o + ("*" if o == default else "") for o in group_options(group))
            lines.append(f"  {group:<11}{GROUP_MEANINGS.get(group, '')}: {options}")
        lines += ["", "main keys (key=value; the default shown):"]
        rows = [(f"{k}={d}", m) for k, d, m in main_keys(name)]
        width = min(44, max(len(a) for a, _ in rows) + 2)
        lines += [f"  {a:<{width}}{m}" if len(a) < width else f"  {a}\n  {'':<{width}}{m}" for a, m in rows]
        lines += [
            "",
            f"`o2o {name} --cfg` prints every key. A key no config declares is refused by name; "
            f"+key=value adds one only below {', '.join(OPEN_SECTIONS)}.",
        ]
        if name != "export":
            lines.append(
                "Progress: a bar on a terminal; in a file, a pipe or CI a plain line every "
                "O2O_PROGRESS_EVERY_S seconds (default 10); *.progress=false: none."
            )
        lines.append("")
    lines += ["examples:", *(f"  {e}" for e in EXAMPLES[name])]
    return "\n".join(lines)
