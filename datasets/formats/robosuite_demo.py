"""robosuite demonstration files (``demo.hdf5``) as o2o episodes, by replay in the o2o env.

robosuite's ``DataCollectionWrapper`` + ``gather_demonstrations_as_hdf5`` write, per kept
demo, only MuJoCo states, actions and the model XML::

    data.attrs: env, env_info (JSON: env_name, robots, controller_configs), date, time, repository_version
    data/demo_N/states  (T, S)  row i is the state *before* action i (the state after the last is dropped)
    data/demo_N/actions (T, A)
    data/demo_N.attrs["model_file"]  the model XML, with the recording machine's absolute mesh paths

Observations, rewards and success are recovered by replaying each demo in the o2o env of
``env_cfg`` (which must be the same task, robot and controller): the model XML is loaded
(re-rooted by robosuite's own helper), the first state set, and then

- ``replay="actions"`` (default): the actions are replayed open loop, so observations and
  rewards are exactly what the env produces; the MuJoCo state after every action is
  compared with the recorded one, and a demo whose largest difference exceeds
  ``max_state_error`` is refused (the error says which demo, step and how far);
- ``replay="states"``: the observation of step i is taken at recorded state i, and the
  reward/success of step i from one simulated step from there (for recordings this
  simulator does not reproduce, e.g. from another MuJoCo version). robosuite samples a
  live observation a little before the end of a control step, so these observations
  differ from what the env emits (on Lift: up to ~2e-3 in positions, ~2e-2 rad/s in joint
  velocities); rewards are the same.

Only successful demos are in such a file (robosuite drops the rest), numbered from 1 in the
recording folder's order; episodes are appended in demo-number order, ending truncated.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from o2o.core.hashing import sha256_path
from o2o.datasets.episode import Episode
from o2o.datasets.formats.common import (
    ForeignData,
    ForeignFormatError,
    Selection,
    env_schema,
    imported_provenance,
    open_hdf5,
    select_plain,
)

REPLAY_MODES = ("actions", "states")
# Controller settings that change what an action means; they must match the o2o env's.
CONTROLLER_KEYS = ("type", "input_type", "input_max", "input_min", "output_max", "output_min", "input_ref_frame")


def demo_names(group, name: str) -> list[str]:
    """``demo_N`` groups in number order (robosuite numbers them from 1; h5py lists them as text)."""
    names = [k for k in group.keys() if re.fullmatch(r"demo_\d+", k)]
    if not names:
        raise ForeignFormatError(f"{name}: group 'data' holds no demo_N groups")
    return sorted(names, key=lambda k: int(k.split("_")[1]))


def _controller_problems(recorded: Mapping, env_cfg_name: str, have: Mapping, name: str) -> list[str]:
    problems = []
    if recorded.get("type") != have.get("type"):
        problems.append(
            f"controller_configs.type {recorded.get('type')!r} != env {env_cfg_name!r}'s {have.get('type')!r}"
        )
    for part, rec in (recorded.get("body_parts") or {}).items():
        mine = (have.get("body_parts") or {}).get(part)
        if mine is None:
            continue  # a part the o2o robot does not have would show up as an action-size mismatch
        for key in CONTROLLER_KEYS:
            if key in rec and key in mine and json.dumps(rec[key]) != json.dumps(mine[key]):
                problems.append(
                    f"controller_configs.body_parts.{part}.{key} {rec[key]!r} != env {env_cfg_name!r}'s {mine[key]!r}"
                )
    return [f"{name}: data.attrs['env_info'] {p}" for p in problems]


def read_robosuite_demo(
    path: str | Path,
    env_cfg: Mapping[str, Any],
    selection: Selection = Selection(),
    source: str | None = None,
    policy_id: str | None = None,
    replay: str = "actions",
    max_state_error: float = 1e-4,
) -> ForeignData:
    """Replay every selected demo of a robosuite ``demo.hdf5`` in the o2o env ``env_cfg``."""

    from o2o.envs import make_env

    if replay not in REPLAY_MODES:
        raise ValueError(f"replay {replay!r} not one of {REPLAY_MODES}")
    path = Path(path)
    name = path.name
    origin = {"format": "robosuite", "file": name, "sha256": sha256_path(path)}
    with open_hdf5(path) as f:
        if "data" not in f:
            raise ForeignFormatError(f"{name}: group 'data' is missing (not a robosuite demo file)")
        data = f["data"]
        if "env_info" not in data.attrs:
            raise ForeignFormatError(f"{name}: attribute data.attrs['env_info'] is missing")
        try:
            env_info = json.loads(data.attrs["env_info"])
        except ValueError as e:
            raise ForeignFormatError(f"{name}: data.attrs['env_info'] is not JSON ({e})") from None
        names = demo_names(data, name)
        keep = select_plain(len(names), selection, [source or "human"] * len(names), name)
        demos = []
        for j in keep:
            g = data[names[j]]
            for key in ("states", "actions"):
                if key not in g:
                    raise ForeignFormatError(f"{name}: key 'data/{names[j]}/{key}' is missing")
            if "model_file" not in g.attrs:
                raise ForeignFormatError(f"{name}: attribute 'data/{names[j]}'.attrs['model_file'] is missing")
            states, actions = g["states"][()], g["actions"][()]
            if states.ndim != 2 or actions.ndim != 2 or len(states) != len(actions) or len(actions) == 0:
                raise ForeignFormatError(
                    f"{name}: key 'data/{names[j]}/states' {states.shape} and 'actions' {actions.shape} must be 2-D "
                    "with one state per action (robosuite drops the state after the last action)"
                )
            demos.append((j, names[j], states, actions, str(g.attrs["model_file"])))
        file_attrs = {k: str(data.attrs[k]) for k in ("env", "date", "time", "repository_version") if k in data.attrs}

    schema, env_rec = env_schema(env_cfg)
    env = make_env(env_cfg)
    sim = env.unwrapped
    try:
        if not hasattr(sim, "load_model_xml"):
            raise ForeignFormatError(
                f"{name}: env {env_cfg.get('name')!r} is not a robosuite env; robosuite demos "
                "replay only in one (e.g. env=lift)"
            )
        problems = []
        if env_info.get("env_name") != env_cfg.get("id"):
            problems.append(
                f"{name}: data.attrs['env_info'] env_name {env_info.get('env_name')!r} != env "
                f"{env_cfg.get('name')!r}'s id {env_cfg.get('id')!r}"
            )
        robots = env_info.get("robots")
        robots = [robots] if isinstance(robots, str) else list(robots or [])
        if robots and robots != sim.robot_names:
            problems.append(
                f"{name}: data.attrs['env_info'] robots {robots} != env {env_cfg.get('name')!r}'s {sim.robot_names}"
            )
        problems += _controller_problems(
            env_info.get("controller_configs") or {}, str(env_cfg.get("name")), sim.controller_config, name
        )
        if problems:
            raise ForeignFormatError("; ".join(problems) + " (the recorded actions would mean something else here)")
        env.reset(seed=0)  # links robosuite's random streams once; the demo's model and state replace it
        prov = imported_provenance(
            origin, source or "human", policy_id or "robosuite_demo", {"recorded": file_attrs} if file_attrs else None
        )
        episodes, labels, errors, seconds = [], [], [], 0.0
        for j, demo, states, actions, xml in demos:
            label = f"{name}: data/{demo}"
            t0 = time.perf_counter()
            ep, err = _replay(sim, label, states, actions, xml, replay, max_state_error)
            seconds += time.perf_counter() - t0
            ep.provenance = prov
            episodes.append(ep)
            labels.append(label)
            errors.append(err)
    finally:
        env.close()
    steps = sum(len(e) for e in episodes)
    stats = {
        "replay": replay,
        "max_state_error": float(max(errors)) if errors else 0.0,
        "replay_steps_per_s": steps / max(seconds, 1e-9),
        "demos": [d[1] for d in demos],
    }
    return ForeignData(episodes, labels, schema, env_rec, origin, stats=stats)


def _replay(
    sim, label: str, states: np.ndarray, actions: np.ndarray, xml: str, replay: str, tolerance: float
) -> tuple[Episode, float]:
    """One demo replayed in ``sim`` (a RobosuiteEnv); returns the episode and the largest state error."""
    sim.load_model_xml(xml)
    if actions.shape[1] != sim.action_space.shape[0]:
        raise ForeignFormatError(
            f"{label}/actions: {actions.shape[1]} action dimensions, the env has {sim.action_space.shape[0]}"
        )
    try:
        obs = sim.set_sim_state(states[0])
    except ValueError as e:
        raise ForeignFormatError(f"{label}/states: {e} (the model XML and the states disagree)") from None
    observations, rewards, success, worst = [], [], False, 0.0
    for i, a in enumerate(actions):
        if replay == "states":
            obs = sim.set_sim_state(states[i])
        observations.append(obs)
        obs, r, _term, _trunc, info = sim.step(a)
        rewards.append(r)
        success = success or bool(info.get("is_success"))
        if i + 1 < len(states):
            err = float(np.max(np.abs(sim.sim_state() - states[i + 1])))
            worst = max(worst, err)
            if replay == "actions" and err > tolerance:
                raise ForeignFormatError(
                    f"{label}/states: replaying the actions diverges from the recorded state {i + 1} by {err:.3g} "
                    f"(> max_state_error {tolerance:g}); the recording came from another simulator build, or use "
                    "replay=states to take observations from the recorded states"
                )
    T = len(actions)
    episode = Episode(
        observations=np.stack(observations),
        actions=actions,
        rewards=np.asarray(rewards, np.float32),
        terminals=np.zeros(T, bool),
        timeouts=np.eye(1, T, T - 1, dtype=bool)[0],
        final_observation=obs,
        provenance={},
        success=success,
    )
    return episode, worst
