"""The finetune stage: the offline policy that passed the gate keeps learning online.

The checkpoint's algorithm (IQL, AWAC, CQL, Cal-QL, TD3+BC; ``finetune.algo`` and the per-algorithm
``finetune.algo_overrides`` adjust its config for the online phase) continues from its
weights with the same Lightning machinery as offline training. Its replay becomes a mix
of the offline rows it was trained on (that exact dataset version) and a growing online
buffer (:mod:`o2o.policies.online`); a callback steps the simulator between updates; every
finished episode is appended to the *same* dataset with source ``online`` and the policy
version that collected it, committed in batches (an interrupted run keeps what it
committed). Periodic evaluation guards the run: a policy that falls too far below its
pre-finetune level is rolled back to its best weights and the stage says so. The final
(or restored) policy is evaluated on the evaluate stage's episodes and seeds, so promote
compares like with like, and saved as a normal o2o checkpoint recording where it came from.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
from omegaconf import DictConfig

from o2o.datasets import DatasetVersion, Episode, EpisodeStore
from o2o.deploy.manifest import file_unchanged, sha256_file
from o2o.pipeline.artifacts import FinetuneArtifact
from o2o.pipeline.config import plain
from o2o.pipeline.dag import Stage
from o2o.pipeline.progress import Progress
from o2o.policies.algos.base import OfflineAlgorithm, read_checkpoint, resolve_algorithm, updates_to_multiple
from o2o.policies.callbacks import SimEvaluation
from o2o.policies.data import TensorReplay
from o2o.policies.evaluation import Evaluator
from o2o.policies.online import FinetuneMonitor, MixedReplay, OnlineInteraction, RatioSchedule, RollbackRule
from o2o.policies.online.interaction import check_schedule
from o2o.policies.training import (
    TrainerSpec,
    algorithm_transitions,
    check_env,
    compile_if_asked,
    make_trainer,
    select_episodes,
    step_loader,
)


class EpisodeSink:
    """Appends finished episodes to an open store, committing every ``every_episodes`` episodes or
    ``every_s`` seconds (one commit per batch: the index is rewritten once, not per episode)."""

    def __init__(self, store: EpisodeStore, every_episodes: int = 10, every_s: float = 10.0):
        self.store, self.every_episodes, self.every_s = store, max(1, int(every_episodes)), float(every_s)
        self.pending: list[Episode] = []
        self.indices: list[int] = []
        self._last = time.perf_counter()

    def __call__(self, episode: Episode) -> None:
        self.pending.append(episode)
        if len(self.pending) >= self.every_episodes or time.perf_counter() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.indices += self.store.append_many(self.pending)
            self.pending.clear()
        self._last = time.perf_counter()


def build_finetune_module(checkpoint: str, cfg: DictConfig, store: EpisodeStore) -> OfflineAlgorithm:
    """The checkpoint's algorithm with its weights, its config adjusted for the online phase and its
    offline replay (the dataset version it was trained on, from ``store``) attached."""
    f = cfg.finetune
    ckpt = read_checkpoint(checkpoint, "finetune:")
    cls = resolve_algorithm(ckpt["o2o"]["cls"])
    hp = ckpt["hyper_parameters"]
    name = str(hp["algo"].get("name") or cls.__name__.lower())
    algo = {**hp["algo"], **(plain(f.algo_overrides).get(name) or {}), **(plain(f.algo) or {})}
    if f.batch_size is not None:
        algo["batch_size"] = int(f.batch_size)
    offline_meta = hp.get("meta") or {}
    ds = offline_meta.get("dataset")
    if not ds or "version" not in ds:
        raise ValueError(
            f"finetune: checkpoint {checkpoint!r} records no dataset version (meta.dataset.version); "
            "finetuning mixes in the offline data it was trained on"
        )
    v = ds["version"]
    selection = {**(ds.get("selection") or {}), "version": f"{v['episodes']}@{v['fingerprint']}"}
    idx = select_episodes(store, selection)
    tr = algorithm_transitions(cls, algo, store.load_transitions(idx))
    meta = copy.deepcopy(offline_meta)
    meta["finetune"] = {
        "from_checkpoint": str(checkpoint),
        "from_fingerprint": sha256_file(checkpoint),
        "from_updates": int(ckpt["o2o"].get("updates", 0)),
        "offline_dataset_version": v,
        "dataset_path": str(store.path),
        "config": plain(f),
    }
    try:
        module = cls(int(hp["obs_dim"]), int(hp["act_dim"]), algo, hp["normalization"], meta)
    except ValueError as e:  # an override the algorithm does not know: say which config it came from
        raise ValueError(f"finetune.algo / finetune.algo_overrides.{name} for checkpoint {checkpoint!r}: {e}") from e
    module.load_state_dict(ckpt["state_dict"])
    if getattr(module, "critic", None) is None:
        raise ValueError(
            f"finetune: {name!r} ({checkpoint}) learns no value function, so online data cannot improve "
            "it; finetune an IQL, AWAC, CQL, Cal-QL, TD3+BC or SAC checkpoint"
        )
    # Normalised with the checkpoint's statistics: the networks were trained on those.
    module.attach_replay(TensorReplay.from_transitions(tr, module.norm, seed=int(cfg.trainer.seed)))
    return module


class ResumePoint(L.Callback):
    """Saves a resumable checkpoint (weights, optimiser states, update count, the monitor's curve and
    best weights) every ``every`` updates, after the periodic evaluation of that update, and tells
    ``saved(path, updates)`` so that the attempt record names it."""

    def __init__(self, path: Path, every: int, saved: Callable[[str, int], None], monitor: FinetuneMonitor):
        self.path, self.every, self.saved, self.monitor = Path(path), int(every), saved, monitor

    def updates_to_boundary(self, trainer, pl_module) -> int | None:
        return updates_to_multiple(int(trainer.global_step), self.every)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        k = int(trainer.global_step)
        if self.every <= 0 or k == 0 or k % self.every or self.monitor.rollback is not None or trainer.should_stop:
            return
        trainer.save_checkpoint(str(self.path), weights_only=False)  # atomic in Lightning (tmp + rename)
        self.saved(str(self.path), k)


def _resume_state(attempt: dict | None) -> dict | None:
    """The interrupted attempt's record when there is something to resume from (its dataset version at least)."""
    if not attempt or not attempt.get("resumed") or not attempt.get("dataset_before"):
        return None
    return attempt


def finetune(
    cfg: DictConfig,
    checkpoint: str,
    dataset_path: str,
    out_dir: str | Path,
    log: Callable[[str], None] = print,
    verify: bool = True,
    attempt: dict | None = None,
    save_attempt: Callable[..., None] | None = None,
    tag: dict | None = None,
) -> dict:
    """Finetune ``checkpoint`` online in ``cfg.env``, appending episodes to ``dataset_path``.

    Returns the stage's artifact (see the module docstring); the checkpoint is written to
    ``<out_dir>/finetuned.ckpt`` and the artifact to ``<out_dir>/finetune.json``.

    ``tag`` goes into the online episodes' provenance (``run``: which attempt of which run);
    ``attempt`` is the pipeline's attempt record and ``save_attempt(**fields)`` records the dataset version before finetuning, the first seed and,
    at every periodic evaluation, a resumable checkpoint (``<out_dir>/resume.ckpt``). When
    ``attempt`` is an interrupted one (``resumed``), finetuning goes on from its last resumable
    checkpoint, with the online episodes it had committed back in the online replay (their
    steps count against ``finetune.steps``); the episode running at the interruption is lost.
    """
    save_attempt = save_attempt or (lambda **kw: None)
    resume = _resume_state(attempt)
    tag = dict(tag) if tag else ({"id": attempt["id"], "stage": "finetune"} if attempt else None)
    run_id = (tag or {}).get("id")
    start = time.perf_counter()
    f, out_dir = cfg.finetune, Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_schedule(f.env_steps_per_update, f.updates_per_env_step)  # whole numbers, before anything is opened
    steps, warmup, per_update = int(f.steps), int(f.warmup_steps), int(f.env_steps_per_update)
    utd = int(f.updates_per_env_step)
    if not 0 <= warmup < steps:
        raise ValueError(f"finetune.steps ({steps}) must exceed finetune.warmup_steps ({warmup})")
    if str(f.keep) not in ("best", "last"):
        raise ValueError(f"finetune.keep must be 'best' or 'last', got {f.keep!r}")
    n_updates = OnlineInteraction.updates_for(steps, warmup, per_update, utd)
    # finetune.eval.every counts env steps; the monitor and the resume points count updates.
    every = max(1, -(-int(f.eval.every) * utd // per_update)) if int(f.eval.every) > 0 else 0
    with EpisodeStore.open(dataset_path, mode="r", verify=verify) as store:
        check_env(store, cfg.env)
        module = build_finetune_module(checkpoint, cfg, store)
    offline = module.replay
    online = TensorReplay(module.obs_dim, module.act_dim, steps, seed=int(cfg.trainer.seed) + 1)
    if offline.has_mc_returns:  # Cal-QL: online rows get theirs when their episode ends
        online.enable_mc_returns()
    r = f.ratio
    mixed = MixedReplay(
        offline,
        online,
        RatioSchedule(float(r.start), float(r.end), n_updates if r.anneal_updates is None else int(r.anneal_updates)),
    )
    module.attach_replay(mixed)

    env_cfg = plain(cfg.env)
    gamma = float(module.hp.gamma)
    references = plain(cfg.env.get("reference_returns"))
    e = f.eval
    periodic = Evaluator(
        env_cfg,
        episodes=int(e.episodes),
        num_envs=int(e.num_envs),
        seed=int(e.seed),
        gamma=gamma,
        asynchronous=bool(e.asynchronous),
    )
    rb = f.rollback
    rule = (
        RollbackRule(str(rb.metric), float(rb.margin), int(rb.patience), bool(rb.relative), float(rb.get("se", 0.0)))
        if rb.enabled
        else None
    )
    fp = module.hparams["meta"]["finetune"]["from_fingerprint"]
    store = EpisodeStore.open(dataset_path, mode="a", verify=verify)  # the writer lock for the whole online phase
    before = after = store.version
    sink = EpisodeSink(store, int(f.commit_every_episodes), float(f.commit_every_s))
    interaction = None
    restored: list[int] = []
    resume_from, resumed = None, None
    try:
        seed = int(f.seed) if f.seed is not None else store.num_episodes
        if resume is not None:
            before = DatasetVersion.from_dict(resume["dataset_before"])
            seed = int(resume.get("seed", seed))
            restored = [i for part in store.written_by(str(run_id), before.episodes).values() for i in part]
            ckpt = resume.get("resume_checkpoint")
            resume_from = ckpt if ckpt and Path(ckpt).is_file() else None
        else:
            save_attempt(dataset_before=before.to_dict(), seed=seed, out_dir=str(out_dir))
        interaction = OnlineInteraction(
            env_cfg,
            online,
            module.norm,
            sink,
            total_steps=steps,
            warmup_steps=warmup,
            env_steps_per_update=per_update,
            updates_per_env_step=utd,
            explore=bool(f.explore),
            temperature=float(f.explore_temperature),
            seed=seed,
            policy_id=f"{module.hp.name}-finetune-{fp[:12]}",
            gamma=gamma,
            mc_tail=str(getattr(module.hp, "mc_tail", "repeat_last")),
            run=tag,
        )
        if restored:
            restored.sort()
            table = store.episodes_table(np.asarray(restored))
            interaction.restore(
                store.load_transitions(np.asarray(restored)),
                [
                    {
                        "return": float(ret),
                        "success": None if s < 0 else bool(s),
                        "length": int(n),
                        "policy_version": int(v),
                    }
                    for ret, s, n, v in zip(
                        table["returns"], table["success"], table["length"], table["policy_version"]
                    )
                ],
            )
        monitor = FinetuneMonitor(
            SimEvaluation(periodic, 0, references),
            every,
            rule,
            metric=str(rb.metric),
            env_steps=lambda: interaction.steps,
            log=log,
        )
        point = ResumePoint(
            out_dir / "resume.ckpt",
            every,
            monitor=monitor,
            saved=lambda path, k: save_attempt(resume_checkpoint=path, resume_updates=k, env_steps=interaction.steps),
        )
        spec = TrainerSpec.from_config(
            cfg.trainer,
            log_every=int(module.hp.log_every),
            max_steps=n_updates,
            devices=1,
            strategy="auto",
            progress=bool(f.progress),
        )
        if spec.fast_path != "false":
            # On the fast path the updates between two env steps run as one Lightning step (steps end
            # where an env step is due, so more per step would not be used); fast_path=false keeps
            # Lightning's loop as configured.
            spec = replace(spec, updates_per_step=max(spec.updates_per_step, utd))
        trainer = make_trainer(
            spec,
            out_dir,
            [monitor, interaction, point],  # pre-finetune evaluation first
            progress=lambda done, total: Progress("finetune", total, "updates", initial=done),
            stats=lambda: {"env steps": f"{interaction.steps:,}/{steps:,}", "episodes": len(interaction.episodes)},
        )
        log(
            f"  {module.hp.name}: {steps} env steps ({warmup} warm-up), {n_updates} updates"
            + (f" ({utd} per env step)" if utd > 1 else "")
            + ", online share "
            f"{float(r.start):.2f}->{float(r.end):.2f}, exploring: "
            + (f"yes (temperature {float(f.explore_temperature):.2f})" if f.explore else "no")
        )
        if resume is not None:
            u = int(resume.get("resume_updates", 0)) if resume_from else 0
            resumed = {
                "from_run": resume.get("run_dir"),
                "updates": u,
                "episodes": len(restored),
                "env_steps": int(interaction.steps),
            }  # before this attempt saves its own points
            mixed.draws = u  # the ratio schedule goes on where it was
            log(
                f"  resuming the finetuning interrupted in {resume.get('run_dir')}: "
                + (f"from its checkpoint at {u} updates" if resume_from else "from the start (it saved no checkpoint)")
                + f", with its {len(restored)} committed online episodes ({interaction.steps} env steps) back in "
                "the online replay"
            )
        compile_if_asked(spec, trainer, module)
        trainer.fit(module, train_dataloaders=step_loader(), ckpt_path=resume_from, weights_only=True)
    finally:
        module.compile_networks(False)
        try:  # an interrupted run keeps every finished episode
            sink.flush()
        finally:
            after = store.version
            store.close()
            if interaction is not None:
                interaction.close()
            periodic.close()

    # the weights to keep: the best periodic evaluation's, or the last (finetune.keep)
    kept = monitor.keep(module, str(f.keep)) if monitor.curve else None

    final_ev = Evaluator(
        env_cfg,
        episodes=int(cfg.evaluation.episodes),
        num_envs=int(cfg.evaluation.num_envs),
        seed=int(cfg.evaluation.seed),
        gamma=gamma,
        asynchronous=bool(cfg.evaluation.asynchronous),
    )
    try:
        with Progress(
            "finetune: final evaluation", int(cfg.evaluation.episodes), "episodes", enabled=bool(f.progress)
        ) as bar:
            evaluation = SimEvaluation(final_ev, 0, references).evaluate(module, progress=bar.update)
    finally:
        final_ev.close()
    rolled_back = monitor.rollback is not None
    eps = interaction.episodes
    appended = sorted(restored + sink.indices)
    outcome = {
        "env_steps": interaction.steps,
        "updates_run": int(trainer.global_step),
        "online_episodes": [appended[0], appended[-1] + 1] if appended else None,
        "dataset_version_after": after.to_dict(),
        "rolled_back": rolled_back,
        "kept": kept,
    }
    module.hparams["meta"]["finetune"].update(outcome)
    path = out_dir / "finetuned.ckpt"
    trainer.save_checkpoint(str(path), weights_only=False)
    result = {
        "checkpoint": str(path),
        "fingerprint": sha256_file(path),
        "algo": str(module.hp.name),
        "from_checkpoint": str(checkpoint),
        "evaluation": evaluation,
        "steps": interaction.steps,
        "updates": int(trainer.global_step),
        "episodes": len(appended),
        "episode_range": outcome["online_episodes"],
        "resumed": resumed,
        "online": {
            "return_mean": float(np.mean([x["return"] for x in eps])) if eps else None,
            "success_rate": _rate([x["success"] for x in eps]),
            "clipped_share": clipped_share(online, module.norm.obs_clip),
            "obs_clip": module.norm.obs_clip,
        },
        "dataset_before": before.to_dict(),
        "dataset_after": after.to_dict(),
        "batch_rows": dict(mixed.rows),
        "rolled_back": rolled_back,
        "rollback": monitor.rollback,
        "pre_finetune": monitor.curve[0] if monitor.curve else None,
        "curve": monitor.curve,
        "kept": kept,
        "seconds": time.perf_counter() - start,
    }
    result["summary"] = summarize(result, str(rb.metric))
    (out_dir / "finetune.json").write_text(json.dumps(result, indent=2, default=float))
    if attempt is None:  # not in a pipeline: nothing will resume it (the stage removes it once recorded)
        (out_dir / "resume.ckpt").unlink(missing_ok=True)
    return result


def _rate(values: list) -> float | None:
    known = [bool(v) for v in values if v is not None]
    return float(np.mean(known)) if known else None


def clipped_share(replay: TensorReplay, clip: float) -> float | None:
    """The share of ``replay``'s rows with a standardised observation feature at ``+-clip`` (stored
    clipped: that far or farther from the mean of the data the statistics came from); None without a
    clip or rows."""
    if clip <= 0 or len(replay) == 0:
        return None
    obs = replay.observations[: len(replay)]
    return float((obs.abs() >= clip).any(dim=1).float().mean())


def summarize(res: dict, metric: str) -> str:
    """One or two sentences: what ran, what was appended, before vs after, and any rollback."""
    pre, ev = res["pre_finetune"] or {}, res["evaluation"]
    text = (
        f"{res['algo']}: {res['steps']} online steps, {res['updates']} updates, {res['episodes']} online episodes "
        f"appended (dataset {res['dataset_before']['episodes']} -> {res['dataset_after']['episodes']} episodes). "
        f"Final evaluation: return {ev['return_mean']:.4g}"
        + (f", success {ev['success_rate']:.2f}" if "success_rate" in ev else "")
        + f" (periodic {metric} before finetuning {pre.get(metric, float('nan')):.4g})."
    )
    online = res.get("online") or {}
    if online.get("clipped_share"):
        text += (
            f" {100 * online['clipped_share']:.0f}% of the online states had a feature more than "
            f"{online['obs_clip']:g} standard deviations from the offline data's mean (clipped there)."
        )
    kept = res.get("kept") or {}
    if kept.get("which") == "best" and not kept.get("is_last") and not res["rollback"]:
        text += (
            " Kept the weights of the best periodic evaluation: "
            + ("those before finetuning" if kept.get("pre_finetune") else f"env step {kept['step']}")
            + f" ({metric} {kept['value']:.4g})."
        )
    rb = res["rollback"]
    if rb:
        text += (
            f" ROLLED BACK at step {rb['step']}: {metric} {rb['value']:.4g}, {rb['drop']:.4g} below the "
            f"pre-finetune {rb['level']:.4g} for {rb['evaluations_below']} evaluations; restored the weights of "
            f"step {rb['restored_step']} ({metric} {rb['restored_value']:.4g})."
        )
    return text


# ---------------------------------------------------------------------------- as a pipeline stage
def run_stage(ctx) -> dict:
    """``o2o run``'s finetune: the gated offline checkpoint, online, into the run's dataset."""
    ckpt, gate, data = ctx.artifact("checkpoint"), ctx.artifact("gate"), ctx.artifact("dataset")
    if not gate.passed:  # the dag blocks finetune after a failed gate; this guards direct use
        raise RuntimeError("finetune: the gate did not pass; the offline policy may not go online")
    res = FinetuneArtifact.from_dict(
        finetune(
            ctx.config,
            ckpt.path,
            data.path,
            ctx.out_dir,
            log=ctx.log,
            verify=data.verify,
            attempt=ctx.attempt,
            save_attempt=ctx.save_attempt,
            tag=ctx.tag,
        )
    )
    offline = ctx.artifact("evaluation").sim or {}
    ctx.log(
        f"  {res.summary}"
        + (
            f" Offline policy on the same seeds: return {offline['return_mean']:.4g}."
            if "return_mean" in offline
            else ""
        )
    )
    return {"finetune": res}


def _valid(outputs: dict) -> bool:
    c = FinetuneArtifact.from_dict(outputs["finetune"])
    return file_unchanged(c.checkpoint, c.fingerprint)


def _finished(ctx, outputs: dict) -> None:
    """Recorded: the resumable checkpoints of this attempt (here and where it began) are not needed."""
    for folder in {
        Path(ctx.run_dir) / ctx.stage,
        Path((ctx.attempt or {}).get("out_dir") or Path(ctx.run_dir) / ctx.stage),
    }:
        (folder / "resume.ckpt").unlink(missing_ok=True)


STAGE = Stage(
    "finetune",
    reads=("checkpoint", "gate", "dataset", "evaluation"),
    writes=("finetune",),
    run=run_stage,
    valid=_valid,
    finished=_finished,
    appends=("dataset",),
    doc="online finetuning from the gated checkpoint; online episodes appended to the dataset; rollback "
    "when performance drops",
)
CONFIG_KEYS = ("env", "finetune", "evaluation", "trainer")
