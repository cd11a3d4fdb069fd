"""The export stage: a trained checkpoint to a verified, controller-ready folder (:mod:`o2o.deploy`).

Reads: a checkpoint (``ckpt``: a ``.ckpt`` file, or an ``o2o pretrain`` run folder, meaning
its best checkpoint), the dataset version it was trained on (recorded observations for
the parity check; env rollouts of the policy when that dataset is gone or changed), the
run's ``summary.json`` (evaluation figures) and the env (observation layout, bounds,
control frequency, closed-loop check). Writes: ``policy.onnx``, ``policy.pt``,
``reference.npz`` and ``manifest.json`` in ``out`` (default ``<run>/export/<checkpoint>``),
the manifest sealed into the ONNX model and, with ``signing_key_file``, signed.

The checkpoint is read by :func:`~o2o.policies.algos.base.read_checkpoint` (an empty,
damaged or changed file is refused by name), and the closed-loop check compares the export
through the runtime with the torch policy on the same episodes *and* with what the
checkpoint was evaluated at (:func:`evaluation_reference`): a checkpoint whose weights no
longer behave as when it was chosen is refused even when torch and the export agree.

``o2o export`` and the ``export`` stage of ``o2o run`` both call :func:`export`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from o2o.deploy.export import TOLERANCE, ExportRefused, ExportSpec, export_policy, remove_abandoned
from o2o.deploy.manifest import MANIFEST_NAME, file_unchanged, key_id, read_signing_key, sha256_file
from o2o.pipeline.artifacts import ExportedArtifact
from o2o.pipeline.config import plain
from o2o.pipeline.dag import Stage

log = logging.getLogger(__name__)

ENV_KEYS = ("name", "id", "factory", "kwargs", "max_episode_steps")
DATASET_KEYS = ("path", "version", "episodes", "transitions", "selection")


@dataclass
class ExportResult:
    """What an export produced."""

    out_dir: str
    checkpoint: str
    manifest_path: str
    parity: dict[str, float]  # max abs diff per backend
    observations_source: str
    closed_loop: dict | None
    files: dict[str, dict]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-able form (a pipeline stage's output; ``o2o.deploy.manifest.load_manifest(out_dir)``
        tells later whether the folder is still intact)."""
        return asdict(self)


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file, or a pretrain run folder's best checkpoint (its ``summary.json``)."""
    p = Path(path)
    if p.is_dir():
        summary = p / "summary.json"
        if not summary.is_file():
            raise FileNotFoundError(
                f"ckpt={path}: a folder without summary.json; give a .ckpt file or an `o2o pretrain` run folder"
            )
        data = json.loads(summary.read_text())
        best = data.get("best_checkpoint") or data.get("last_checkpoint")
        if not best:
            raise FileNotFoundError(f"ckpt={path}: {summary} names no checkpoint")
        p = Path(best)
        if not p.is_absolute() and not p.exists():
            p = Path(path) / "checkpoints" / p.name
    if not p.is_file():
        raise FileNotFoundError(f"ckpt={path}: checkpoint {p} does not exist")
    return p


def default_out_dir(ckpt: Path) -> Path:
    """``<run>/export/<checkpoint stem>`` for ``<run>/checkpoints/x.ckpt``, else ``<folder>/export-<stem>``."""
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "export" / ckpt.stem
    return ckpt.parent / f"export-{ckpt.stem}"


def training_evaluation(ckpt: Path, updates: int) -> dict:
    """Evaluation figures of the run the checkpoint belongs to (its ``summary.json``), if any."""
    summary = ckpt.parent.parent / "summary.json" if ckpt.parent.name == "checkpoints" else ckpt.parent / "summary.json"
    if not summary.is_file():
        return {}
    data = json.loads(summary.read_text())
    rows = data.get("evaluations") or []
    at = next((r for r in rows if int(r.get("step", -1)) == updates), None)
    best = data.get("best_checkpoint")
    out = {
        "summary": str(summary),
        "selection": data.get("selection"),
        "best_checkpoint": best,
        "is_best": bool(best) and Path(best).resolve() == ckpt.resolve(),
        "at_checkpoint": at,
        "best": data.get("best_eval"),
    }
    ope = [r for r in (data.get("ope") or []) if Path(str(r.get("checkpoint", ""))).name == ckpt.name]
    if ope:
        out["ope"] = ope[0]
    return out


def evaluation_reference(raw: Mapping, ckpt: Path, training: Mapping) -> dict | None:
    """What the checkpoint was evaluated at, for the closed-loop check: its own evaluation record
    (``o2o.evaluation``, written with the weights it judged), else its run's ``summary.json`` row at
    the checkpoint's update; None when neither exists."""
    keys = ("return_mean", "return_std", "success_rate", "episodes", "seed", "step")
    ev = (raw.get("o2o") or {}).get("evaluation")
    if ev:
        out = {k: ev.get(k) for k in keys}
        out["source"] = (
            f"the checkpoint's own evaluation record: update {ev.get('step')}, {ev.get('episodes')} "
            f"episodes from seed {ev.get('seed')}"
        )
        return out
    at = training.get("at_checkpoint")
    if at and at.get("return_mean") is not None:
        out = {k: at.get(k) for k in keys}
        out["source"] = (
            f"{training.get('summary')}: evaluation at update {at.get('step')}, "
            f"{int(float(at.get('episodes') or 0))} episodes (the checkpoint has no evaluation record)"
        )
        return out
    return None


def _dataset_observations(meta_ds: Mapping, override: str | None, n: int, seed: int) -> tuple[np.ndarray, str]:
    """Up to ``n`` observations from the episodes the checkpoint was trained on (same dataset version)."""
    from o2o.datasets import EpisodeStore
    from o2o.policies.training import select_episodes

    path = override or meta_ds["path"]
    version = meta_ds["version"]
    selection = dict(meta_ds.get("selection") or {})
    selection["version"] = f"{version['episodes']}@{version['fingerprint']}"
    rng = np.random.default_rng(seed)
    with EpisodeStore.open(path, mode="r") as store:
        idx = select_episodes(store, selection)  # refuses a dataset whose version differs
        lengths = store.episodes_table(idx)["length"]
        order = rng.permutation(len(idx))
        take = order[: int(np.searchsorted(np.cumsum(lengths[order]), n)) + 1]
        obs = store.load_transitions(np.sort(idx[take])).observations
    rows = rng.choice(len(obs), size=min(n, len(obs)), replace=False)
    return np.asarray(obs[np.sort(rows)], np.float32), (
        f"dataset {path} version {version['episodes']}@{version['fingerprint'][:12]} ({len(idx)} episodes)"
    )


def _rollout_observations(env, policy, n: int, episodes: int, seed: int) -> np.ndarray:
    """Observations of ``episodes`` seeded episodes of the policy itself (when no dataset is available)."""
    seen = []
    for k in range(max(1, episodes)):
        obs, _ = env.reset(seed=seed + k)
        done = False
        while not done:
            seen.append(np.asarray(obs, np.float32))
            with torch.no_grad():
                a = policy(torch.as_tensor(obs, dtype=torch.float32)[None]).numpy()[0]
            obs, _, terminated, truncated, _ = env.step(a)
            done = terminated or truncated
    allobs = np.stack(seen)
    rows = np.random.default_rng(seed).choice(len(allobs), size=min(n, len(allobs)), replace=False)
    return allobs[np.sort(rows)]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def export(cfg: DictConfig) -> ExportResult:
    """Export ``cfg.ckpt`` to ``cfg.out`` (see ``configs/export.yaml``); raises :class:`ExportRefused` when unsafe."""
    from o2o.deploy.check import closed_loop_check
    from o2o.envs import env_metadata, make_env
    from o2o.policies.algos.base import build_algorithm, read_checkpoint

    start = time.perf_counter()
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise ValueError(
            "no checkpoint given: o2o export ckpt=runs/pretrain/<run>/checkpoints/<name>.ckpt "
            "(or ckpt=<run folder> for its best checkpoint)"
        )
    ckpt = resolve_checkpoint(cfg.ckpt)
    out_dir = Path(cfg.out) if cfg.get("out") else default_out_dir(ckpt)
    raw = read_checkpoint(str(ckpt))  # readable, o2o's, weights as written (digest), no code unpickled
    module = build_algorithm(raw)
    policy = module.policy()
    hp = raw["hyper_parameters"]
    meta = hp.get("meta") or {}
    stored_env = meta.get("env") or {}
    env_cfg = (meta.get("config") or {}).get("env") or stored_env
    if not env_cfg.get("factory"):
        raise ValueError(f"checkpoint {ckpt}: names no env (meta.env); it was not written by `o2o pretrain`")
    notes: list[str] = []

    # The env as it is built today must produce the observation the policy was trained on.
    env = None
    try:
        env = make_env(env_cfg, seed=int(cfg.parity.seed))
        env_meta = env_metadata(env, env_cfg)
    except ImportError as e:
        if not stored_env.get("obs_layout"):
            raise
        env_meta = stored_env
        notes.append(
            f"env {env_cfg.get('name')!r} could not be built here ({e}); layout and bounds taken from the "
            "checkpoint's record of it; no closed-loop check"
        )
    try:
        if stored_env.get("obs_layout") and not _same(stored_env["obs_layout"], env_meta["obs_layout"]):
            raise ExportRefused(
                f"checkpoint {ckpt}: env {env_cfg.get('name')!r} now produces observation layout "
                f"{[(f['key'], f['shape']) for f in env_meta['obs_layout']]}, the policy was trained "
                f"on {[(f['key'], f['shape']) for f in stored_env['obs_layout']]}"
            )
        layout = env_meta["obs_layout"]
        if layout[-1]["stop"] != module.obs_dim:
            raise ExportRefused(
                f"checkpoint {ckpt}: the policy takes {module.obs_dim} observation values, env "
                f"{env_cfg.get('name')!r} produces {layout[-1]['stop']}"
            )
        norm = module.norm
        low, high = np.asarray(norm.action_low, np.float64), np.asarray(norm.action_high, np.float64)
        space = env_meta["action_space"]
        env_low = np.asarray([float(v) for v in space["low"]])
        env_high = np.asarray([float(v) for v in space["high"]])
        if env_low.shape != low.shape or not (np.allclose(env_low, low) and np.allclose(env_high, high)):
            raise ExportRefused(
                f"checkpoint {ckpt}: the policy scales actions to [{low.tolist()}, {high.tolist()}], "
                f"env {env_cfg.get('name')!r} accepts [{env_low.tolist()}, {env_high.tolist()}]"
            )

        n = int(cfg.parity.observations)
        try:
            obs, source = _dataset_observations(meta["dataset"], cfg.parity.get("dataset"), n, int(cfg.parity.seed))
        except (KeyError, OSError, ValueError) as e:
            if env is None:
                raise ExportRefused(
                    f"no recorded observations for the parity check: the training dataset is not "
                    f"usable ({e}) and the env cannot be built here"
                ) from e
            obs = _rollout_observations(env, policy, n, int(cfg.parity.rollout_episodes), int(cfg.parity.seed))
            source = f"{len(obs)} observations of {int(cfg.parity.rollout_episodes)} env rollouts of the policy"
            notes.append(
                f"training dataset not usable for the parity check ({type(e).__name__}: {e}); used env rollouts instead"
            )
    finally:
        if env is not None:
            env.close()

    algo = dict(hp["algo"])
    ds = meta.get("dataset")
    training = training_evaluation(ckpt, int(raw["o2o"]["updates"]))
    spec = ExportSpec(
        obs_layout=layout,
        action_low=low.tolist(),
        action_high=high.tolist(),
        control_frequency_hz=env_meta.get("control_freq"),
        controller_type=env_meta.get("controller_type"),
        policy={
            "algorithm": algo.get("name"),
            "class": raw["o2o"]["cls"],
            "updates": int(raw["o2o"]["updates"]),
            "actor": type(module.actor).__name__,
            "hidden": algo.get("hidden"),
            "activation": algo.get("activation"),
            "checkpoint": str(ckpt),
            "checkpoint_sha256": sha256_file(ckpt),
            # standardised observations are clipped to +-this inside the graph (0: not clipped)
            "obs_clip": float(module.norm.obs_clip),
        },
        env={k: env_cfg.get(k) for k in ENV_KEYS},
        dataset=None if ds is None else {k: ds.get(k) for k in DATASET_KEYS},
        evaluation={"training": training, "checkpoint": raw["o2o"].get("evaluation")},
        observation_space=env_meta.get("observation_space"),
        observations_source=source,
        runtime={k: plain(cfg.runtime.get(k)) for k in ("safe_action", "max_delta", "deadline_s")},
        notes=notes,
    )

    key_file = cfg.get("signing_key_file")
    key = read_signing_key(str(key_file)) if key_file else None
    check, checked = None, {}
    cl = cfg.closed_loop
    if int(cl.episodes) > 0 and env is not None:

        def trained(o: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return policy(torch.as_tensor(o, dtype=torch.float32)).numpy()

        drop = cl.get("max_success_drop")
        reference = evaluation_reference(raw, ckpt, training) if cl.get("vs_evaluation", True) else None
        if reference is not None:
            notes.append(
                f"closed loop compared with the trained torch policy on the same episodes and with what the "
                f"checkpoint was evaluated at ({reference['source']})"
            )
        elif cl.get("vs_evaluation", True):
            notes.append(
                "closed loop compared with the trained torch policy only: the checkpoint has no evaluation "
                "record and its run's summary.json none at its update"
            )

        def check(folder: Path) -> dict:
            checked["closed_loop"] = closed_loop_check(
                folder,
                env_cfg,
                trained,
                int(cl.episodes),
                int(cl.seed),
                None if drop is None else float(drop),
                reference=reference,
                noise_z=float(cl.get("noise_z", 2.0)),
                success_margin=float(cl.get("success_margin", 0.1)),
                return_margin=float(cl.get("return_margin", 0.1)),
                signing_key=key,
            )
            return checked["closed_loop"]
    elif int(cl.episodes) > 0:
        notes.append("closed-loop check skipped: the env cannot be built here")

    if key is not None:
        notes.append(
            f"signed with the key in {key_file} (key id {key_id(key)}): runtimes given that key accept "
            "only exports signed with it"
        )
    report = export_policy(
        policy, out_dir, obs, spec, tolerance=float(cfg.get("tolerance", TOLERANCE)), check=check, signing_key=key
    )
    m = report.manifest
    # The check's own figures (NaN where a rate is undefined); the manifest holds them JSON-safe (null).
    return ExportResult(
        out_dir=str(out_dir),
        checkpoint=str(ckpt),
        manifest_path=str(out_dir / MANIFEST_NAME),
        parity=report.parity,
        observations_source=source,
        closed_loop=checked.get("closed_loop", m["evaluation"].get("closed_loop")),
        files=m["files"],
        notes=notes,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------- as a pipeline stage
def run_stage(ctx) -> dict:
    """``o2o run``'s export: the promoted policy, with the run's export settings. A resumed attempt
    first removes what the killed one left (a staging folder, an empty export folder)."""
    policy = ctx.artifact("policy")
    attempt = ctx.attempt or {}
    if attempt.get("resumed") and attempt.get("run_dir"):
        removed = remove_abandoned(Path(attempt["run_dir"]) / ctx.stage)
        if removed:
            ctx.log(f"  removed what the interrupted export left: {', '.join(removed)}")
    # Not ctx.out_dir: that makes the folder, and an export appears only whole (renamed into place).
    cfg = OmegaConf.merge(ctx.config.export, {"ckpt": policy.path, "out": str(ctx.run_dir / ctx.stage)})
    res = export(cfg)
    cl = res.closed_loop or {}
    vs = cl.get("vs_evaluation") or {}
    ctx.log(
        f"  exported {policy.origin} policy to {res.out_dir}: parity "
        + ", ".join(f"{k} {v:.1e}" for k, v in res.parity.items())
        + (
            f"; closed loop through the runtime: success {cl['runtime'].get('success_rate')}, return "
            f"{cl['runtime']['return_mean']:.1f} (trained policy: {cl['trained'].get('success_rate')}, "
            f"{cl['trained']['return_mean']:.1f})"
            if cl.get("runtime")
            else ""
        )
        + (
            f"; the checkpoint was evaluated at {vs['metric']} {vs['evaluated']:.4g} ({vs['source']})"
            if vs.get("metric")
            else ""
        )
    )
    return {
        "exported": ExportedArtifact(
            dir=res.out_dir,
            manifest=res.manifest_path,
            parity=res.parity,
            closed_loop=res.closed_loop,
            files=dict(res.files),
            origin=policy.origin,
            fingerprint=sha256_file(res.manifest_path),
        )
    }


def _valid(outputs: dict) -> bool:
    """The recorded export is reusable only if its manifest is unchanged and every file still
    matches the manifest's SHA-256 (a tampered policy.onnx means export again)."""
    from o2o.deploy.manifest import load_manifest

    e = ExportedArtifact.from_dict(outputs["exported"])
    if not file_unchanged(e.manifest, e.fingerprint):
        return False
    try:
        load_manifest(e.dir, verify=True)
    except Exception:  # any mismatch or damage: not valid, the stage reruns
        return False
    return True


STAGE = Stage(
    "export",
    reads=("policy",),
    writes=("exported",),
    run=run_stage,
    valid=_valid,
    doc="ONNX + TorchScript + manifest of the promoted policy, refused unless they match it",
)
CONFIG_KEYS = ("export",)
