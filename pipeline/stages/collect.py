"""The collect stage: drive an env with a behaviour policy and append episodes to the dataset."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from o2o.datasets import Episode, EpisodeRecorder, EpisodeStore, Schema
from o2o.envs import check_reset_options, env_metadata, make_env
from o2o.pipeline.artifacts import DatasetArtifact
from o2o.pipeline.config import plain
from o2o.pipeline.dag import Stage
from o2o.pipeline.stages import dataset_verify
from o2o.policies.behavior.base import DiscardEpisode, KeepEpisode, RestartEpisode, StopCollection
from o2o.policies.behavior.factory import BEHAVIOR_BUILDERS, make_behavior

log = logging.getLogger(__name__)

# Env settings that change what a logged step means; they must match an existing dataset.
ENV_IDENTITY_KEYS = ("name", "id", "kwargs")


class DatasetMismatchError(ValueError):
    """The env or spaces do not match the dataset being appended to."""


@dataclass
class CollectResult:
    """What one collection appended."""

    path: str
    episodes: list[int] = field(default_factory=list)
    steps: int = 0
    returns: list[float] = field(default_factory=list)
    successes: list[bool | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    seconds: float = 0.0
    version: dict | None = None

    @property
    def success_rate(self) -> float | None:
        known = [s for s in self.successes if s is not None]
        return float(np.mean(known)) if known else None


def open_dataset_for(cfg: DictConfig, env) -> EpisodeStore:
    """Open ``cfg.dataset.path`` for appending, creating it from the env if absent.

    An existing dataset must hold the same env (name, id, kwargs) and spaces; otherwise a
    :class:`DatasetMismatchError` says what differs, before any step is taken.
    """
    path = Path(cfg.dataset.path)
    meta = env_metadata(env, cfg.env)
    layout = env.get_wrapper_attr("obs_layout")
    schema = Schema.from_spaces(env.observation_space, env.action_space, layout, cfg.dataset.action_bounds)
    verify = dataset_verify(cfg)
    if not EpisodeStore.is_dataset(path):
        try:  # a collection that ends before its first commit leaves nothing behind
            return EpisodeStore.create(path, schema, env=meta, remove_if_empty=True)
        except FileExistsError:
            pass  # another process created it meanwhile: append to it like to any existing dataset
    # Check as a reader first: a refused collection leaves the dataset untouched, lock file included.
    with EpisodeStore.open(path, mode="r", verify=verify) as existing:
        problems = existing.schema.compatible_with(schema)
        have = existing.env or {}
    for key in ENV_IDENTITY_KEYS:
        if key in have and plain(have.get(key)) != plain(meta.get(key)):
            problems.append(f"env {key} {meta.get(key)!r} != dataset's {have.get(key)!r}")
    if problems:
        raise DatasetMismatchError(
            f"dataset '{path}' was collected in another env or spaces: "
            + "; ".join(problems)
            + " (nothing collected; use another dataset.path)"
        )
    return EpisodeStore.open(path, mode="a", verify=verify)


#: Mixed into an episode's seed for its task draw, so the draw is independent of what else the seed drives.
TASK_STREAM = 0x7A5C


def check_tasks(env, tasks: Any, where: str = "collect.tasks") -> list[dict] | None:
    """``tasks`` (reset options to draw one of per episode) checked against ``env``, in plain form;
    None for null (every episode starts from the env's own reset). A ValueError names the entry and
    the key of the first bad one, before anything is collected or written."""
    if tasks is None:
        return None
    tasks = plain(tasks)
    if not isinstance(tasks, list) or not tasks:
        raise ValueError(
            f"{where} must be a non-empty list of reset options (e.g. [{{start_cell: [3, 1], goal_cell: [1, 1]}}]), "
            f"or null for the env's own reset; got {tasks!r}"
        )
    out = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not task:
            raise ValueError(f"{where}[{i}]: a task is a non-empty mapping of reset options, got {task!r}")
        out.append(check_reset_options(env, task, f"{where}[{i}]"))
    return out


def episode_task(tasks: list[dict] | None, seed: int) -> dict | None:
    """The task of the episode with ``seed``: one of ``tasks`` drawn from the seed alone (so a rerun
    or a resumed collection gives each seed the same task), or None without tasks."""
    if not tasks:
        return None
    return tasks[int(np.random.default_rng([int(seed), TASK_STREAM]).integers(len(tasks)))]


def collect(cfg: DictConfig, progress: Any = None, run: dict | None = None) -> CollectResult:
    """Run ``cfg.collect.episodes`` episodes and append them (committing every few seconds).

    ``progress`` is called as ``progress(result, running_episode_stats)`` after each
    episode (the CLI draws its progress bar with it). ``run`` goes into every episode's
    provenance (which run wrote it; default: a new id for this collection). With
    ``collect.tasks`` (a list of reset options), each episode starts from one of them, drawn
    from its seed, and records it as its task (``provenance.task``).
    """
    c = cfg.collect
    run = dict(run) if run else {"id": uuid.uuid4().hex[:16]}
    env = make_env(cfg.env)
    store = None
    try:
        tasks = check_tasks(env, c.get("tasks"))
        store = open_dataset_for(cfg, env)
        behavior = make_behavior(cfg.behavior, env, cfg.env)
        base_seed = int(c.seed) if c.seed is not None else store.num_episodes
        result = CollectResult(path=str(cfg.dataset.path))
        pending: list[Episode] = []
        last_commit = time.perf_counter()
        start = time.perf_counter()

        def commit() -> None:
            nonlocal last_commit
            if pending:
                result.episodes += store.append_many(pending)
                pending.clear()
            last_commit = time.perf_counter()

        try:
            attempt = 0  # a discarded episode (a person's choice) still uses up its seed
            while len(result.returns) < int(c.episodes):
                seed = base_seed + attempt
                try:
                    ep = run_episode(env, behavior, seed, run=run, options=episode_task(tasks, seed))
                except RestartEpisode:
                    continue
                except DiscardEpisode:
                    attempt += 1
                    continue
                except StopCollection:
                    break
                attempt += 1
                pending.append(ep)
                result.steps += len(ep)
                result.returns.append(ep.episode_return)
                result.successes.append(ep.success)
                result.sources.append(ep.provenance["source"])
                if time.perf_counter() - last_commit >= float(c.commit_every_s) or len(pending) >= int(
                    c.commit_every_episodes
                ):
                    commit()
                if progress is not None:
                    progress(result, len(result.returns))
        finally:
            # Keep what was collected even when interrupted (Ctrl-C) or an episode failed.
            commit()
            behavior.close()  # a teleoperation gives its terminal back
        result.seconds = time.perf_counter() - start
        result.version = store.version.to_dict()
        return result
    finally:
        if store is not None:
            store.close()
        env.close()


def run_episode(
    env, behavior, seed: int, max_steps: int | None = None, run: dict | None = None, options: dict | None = None
) -> Episode:
    """One episode of ``behavior`` in ``env`` from ``reset(seed=seed, options=options)``, recorded
    (``run``: provenance's run tag; ``options``, checked by :func:`check_tasks`: its task)."""
    obs, info = env.reset(seed=seed, options=dict(options) if options else None)
    behavior.reset(seed=seed)
    rec = EpisodeRecorder()
    rec.start(obs)
    if "is_success" in info:
        rec.success = bool(info["is_success"])
    done = False
    while not done:
        try:
            action = np.asarray(behavior.act(obs), dtype=env.action_space.dtype)
        except KeepEpisode:  # a person ended the episode here and keeps it
            if not len(rec):
                raise DiscardEpisode() from None
            rec.mark_truncated()
            break
        human = bool(behavior.human_in_control)
        obs, reward, terminated, truncated, info = env.step(action)
        rec.add(action, reward, terminated, truncated, obs, info, intervention=human)
        behavior.observe(obs, reward, terminated, truncated, info)
        done = terminated or truncated or (max_steps is not None and len(rec) >= max_steps)
    prov = behavior.provenance.to_dict()
    if run:
        prov["run"] = dict(run)
    if options:
        prov["task"] = dict(options)
    return rec.finish(prov, seed=seed)


# ---------------------------------------------------------------------------- as a pipeline stage
def dataset_artifact(path: str, verify: bool = True) -> DatasetArtifact:
    """The dataset as an artifact: its path and *current* version (what downstream stages key on), and
    whether readers check contents (``verify``: not part of the artifact's fingerprint)."""
    with EpisodeStore.open(path, mode="r", verify=verify) as store:
        v = store.version
        return DatasetArtifact(
            path=str(path),
            episodes=int(v.episodes),
            fingerprint=str(v.fingerprint),
            transitions=int(store.num_steps),
            verify=bool(verify),
        )


ENTRY_KEYS = ("behavior", "episodes", "params", "tasks")  # what one collect.behaviors entry may hold


def collect_entries(cfg: DictConfig) -> list[dict]:
    """``collect.behaviors`` checked whole before anything is collected: each entry's keys, its
    behaviour (a config name of configs/behavior/, or a behaviour node written out; ``params`` set
    some of its keys, e.g. ``{behavior: noisy, episodes: 30, params: {noise_std: 0.5}}``), its episode
    count and its tasks (the entry's own ``tasks``, else ``collect.tasks``) against the env. A bad
    entry is refused naming it and the key, so no entry before it is collected either."""
    from o2o.pipeline.config import load_config

    entries = []
    env = None
    try:
        for k, item in enumerate(cfg.collect.behaviors):
            where = f"collect.behaviors[{k}]"
            if not isinstance(item, DictConfig):
                raise ValueError(f"{where}: an entry is a mapping {{behavior, episodes, tasks}}, got {plain(item)!r}")
            unknown = sorted(set(item.keys()) - set(ENTRY_KEYS))
            if unknown or "behavior" not in item or "episodes" not in item:
                raise ValueError(
                    f"{where}: entries take the keys {list(ENTRY_KEYS)} (behavior and episodes required), got "
                    f"{sorted(item.keys())}"
                )
            try:
                episodes = int(item.episodes)
            except (TypeError, ValueError):
                episodes = -1
            if episodes < 0:
                raise ValueError(f"{where}.episodes must be an integer >= 0, got {plain(item.episodes)!r}")
            if isinstance(item.behavior, DictConfig):
                behavior, label = item.behavior, str(item.behavior.get("kind"))
                spec = BEHAVIOR_BUILDERS.get(label)
                unknown = [] if spec is None else sorted(set(behavior.keys()) - spec.keys - {"kind"})
                if spec is None or unknown:
                    raise ValueError(
                        f"{where}.behavior: "
                        + (
                            f"unknown kind {label!r}; expected one of {sorted(BEHAVIOR_BUILDERS)}"
                            if spec is None
                            else f"unknown keys {unknown} for kind {label!r}; allowed: {sorted(spec.keys)}"
                        )
                    )
            else:
                behavior, label = load_config("collect", [f"behavior={item.behavior}"]).behavior, str(item.behavior)
            params = item.get("params") or {}
            unknown = sorted(set(params) - set(behavior))
            if unknown:
                raise ValueError(
                    f"{where}.params: {unknown} not keys of behavior {label!r} (it has {sorted(behavior)})"
                )
            behavior = OmegaConf.merge(behavior, params) if params else behavior
            tasks, tasks_where = item.get("tasks"), f"{where}.tasks"
            if tasks is None:
                tasks, tasks_where = cfg.collect.get("tasks"), "collect.tasks"
            if tasks is not None:
                env = env or make_env(cfg.env)
                tasks = check_tasks(env, tasks, tasks_where)
            entries.append({"behavior": behavior, "label": label, "episodes": episodes, "tasks": tasks})
    finally:
        if env is not None:
            env.close()
    return entries


def run_stage(ctx) -> dict:
    """``o2o run``'s collect: each ``collect.behaviors`` entry (a behaviour and an episode count,
    optionally the tasks its episodes draw from) appended in turn to ``dataset.path``.

    Every episode's provenance names this attempt and the entry (``run: {id, part}``), so an
    attempt that was interrupted is completed, not repeated: the rerun collects only what each
    entry still lacks (with a fixed ``collect.seed``, the seeds continue where it stopped, and so
    do the tasks drawn from them)."""
    from o2o.pipeline.progress import collect_progress

    cfg = ctx.config
    attempt = ctx.attempt or {}
    tag = ctx.tag
    entries = collect_entries(cfg)
    done: dict = {}
    if attempt.get("resumed") and EpisodeStore.is_dataset(str(cfg.dataset.path)):
        with EpisodeStore.open(str(cfg.dataset.path), mode="r", verify=False) as store:
            done = store.written_by(tag["id"])
    for k, item in enumerate(entries):
        label = item["label"]
        have, want = len(done.get(k, [])), int(item["episodes"])
        if have >= want:
            ctx.log(f"  {label}: {have} episodes already collected by the interrupted attempt")
            continue
        seed = cfg.collect.get("seed")
        part = OmegaConf.merge(
            cfg,
            {
                "behavior": item["behavior"],
                "collect": {
                    "episodes": want - have,
                    "seed": None if seed is None else int(seed) + have,
                    "tasks": item["tasks"],
                },
            },
        )
        with collect_progress(part, f"collect {label}") as bar:
            res = collect(part, progress=bar.update, run={**tag, "part": k})
        ctx.log(
            f"  {label}: {len(res.episodes)} episodes, return {np.mean(res.returns):.1f}"
            + (f", success {res.success_rate:.2f}" if res.success_rate is not None else "")
            + f" ({res.seconds:.0f} s)"
            + (f"; {have} more kept from the interrupted attempt" if have else "")
        )
    if not EpisodeStore.is_dataset(str(cfg.dataset.path)):
        raise ValueError(
            f"collect: no episode was collected and no dataset exists at {cfg.dataset.path}: nothing to "
            "train on (collect.behaviors asks for 0 episodes, or every collection stopped at once)"
        )
    art = dataset_artifact(str(cfg.dataset.path), dataset_verify(cfg))
    _remember(ctx, art)
    return {"dataset": art}


def _refresh(ctx, outputs: dict) -> dict:
    """The dataset as it stands now; but what an interrupted run's own stages appended (the online
    episodes of its finetuning) is not new data: while it is all the growth since the version that
    run started from, that version stands, and the stages it finished stay finished. This run takes
    the interrupted one over (it is this run resumed, or one whose later stages' settings changed)."""
    path = str(ctx.config.dataset.path)
    art = dataset_artifact(path, dataset_verify(ctx.config))
    ra = ctx.run_attempt or {}
    candidates = ([ra] if ra.get("resumed") else []) + [
        a for a in reversed(ctx.open_attempts("<run>")) if a.get("fingerprint") != ra.get("fingerprint")
    ]
    for cand in candidates:
        before = cand.get("dataset")
        if not before or art.episodes <= int(before["episodes"]):
            continue
        with EpisodeStore.open(path, mode="r", verify=False) as store:
            if store.version_at(int(before["episodes"])).fingerprint != before["fingerprint"]:
                continue
            ids = {str(cand["id"]), *(cand.get("adopted_ids") or [])}  # its own and those of runs it took over
            ours = sum(len(v) for v in store.written_by(ids, int(before["episodes"]), "pipeline").values())
        if ours != art.episodes - int(before["episodes"]):
            continue  # the dataset grew by other means too: that is new data
        if cand is not ra:
            ctx.save_run_attempt(
                adopted=sorted({*(ra.get("adopted") or []), cand["fingerprint"]}),
                dataset=before,
                adopted_ids=sorted({*(ra.get("adopted_ids") or []), *ids}),
            )
        ctx.log(
            f"[collect] the {ours} episodes the run interrupted in {cand.get('run_dir')} appended (online) are not "
            f"new data: resuming on dataset version {before['episodes']}@{str(before['fingerprint'])[:12]}"
        )
        return {
            "dataset": replace(
                art,
                episodes=int(before["episodes"]),
                fingerprint=str(before["fingerprint"]),
                transitions=int(before["transitions"]),
            )
        }
    _remember(ctx, art)
    return {"dataset": art}


def _remember(ctx, art: DatasetArtifact) -> None:
    """The run's attempt records the dataset version the run started from (its later stages append)."""
    if not (ctx.run_attempt or {}).get("dataset"):
        ctx.save_run_attempt(
            dataset={"episodes": art.episodes, "fingerprint": art.fingerprint, "transitions": art.transitions}
        )


def _valid(outputs: dict) -> bool:
    return Path(DatasetArtifact.from_dict(outputs["dataset"]).path).exists()


STAGE = Stage(
    "collect",
    reads=(),
    writes=("dataset",),
    run=run_stage,
    refresh=_refresh,
    valid=_valid,
    doc="log episodes of the configured behaviours into the growing dataset",
    code_sensitive=False,  # episodes are data: an upgraded o2o must not append the composition again
)
CONFIG_KEYS = ("env", "dataset", "collect")
