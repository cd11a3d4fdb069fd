"""Export a deterministic policy to ONNX and TorchScript, refused unless both match it.

The exported graph is :class:`ExportGraph`: raw env observation ``obs [batch, obs_dim]``
float32 -> ``action [batch, act_dim]`` float32 in env units, with observation
normalisation, action scaling and clipping to the action bounds inside, so a controller
feeds sensor values and sends the output as is.

Every export goes through the same steps, in a staging folder next to the destination:

1. ONNX (torch.export-based exporter, opset :data:`OPSET`) and TorchScript (traced);
2. parity: onnxruntime and TorchScript, each loaded back from its file, run on the given
   recorded observations (whole batch and one at a time, as a controller runs them) and
   are compared with the eager torch graph; a max abs diff above the tolerance (default
   1e-5) or a policy that is not deterministic refuses the export (:class:`ExportRefused`)
   and nothing reaches the destination;
3. ``reference.npz`` (a sample of the observations with the torch actions, so any
   controller can re-check its own integration) and ``manifest.json`` (see
   :mod:`o2o.deploy.manifest`) with the SHA-256 of every file, **sealed** into the ONNX
   model (:func:`seal_export`: the digest of each manifest section in the model's metadata,
   so the runtime refuses a manifest edited after export) and optionally signed with a
   deployment's key (HMAC-SHA256); the folder must load in the runtime;
4. an optional check on the finished folder (the closed-loop check in simulation), which
   may refuse too; its result goes into the manifest, which is then sealed (and signed)
   again and loaded in the runtime once more;
5. the staging folder replaces the destination in one rename.

This module needs torch and onnx, not Lightning, zarr or Hydra: the caller (the export
stage) loads checkpoints and data and passes plain objects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from o2o.core.processes import alive
from o2o.core.versions import package_versions
from o2o.deploy.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ONNX_NAME,
    REFERENCE_NAME,
    SEAL_KEY,
    SIGNATURE_SECTION,
    TORCHSCRIPT_NAME,
    bounds_to_json,
    check_manifest,
    hash_files,
    seal_digests,
    seal_text,
    sha256_file,
    sign,
    write_manifest,
)

OPSET = 18  # pinned: onnxruntime >= 1.14 runs it; the torch.export-based exporter starts at 18
TOLERANCE = 1e-5
INPUT_NAME, OUTPUT_NAME = "obs", "action"
SINGLE_ROWS = 32  # rows also checked one at a time (batch 1 is what a controller runs)


class ExportRefused(RuntimeError):
    """The exported files do not reproduce the policy (or a check on them failed): nothing was written."""


class ExportGraph(nn.Module):
    """The exported computation: ``policy(obs)`` clamped to ``[low, high]`` (env units).

    ``policy`` maps raw observations to env-unit actions with normalisation and scaling
    inside (:class:`~o2o.policies.algos.base.DeterministicPolicy`); the final clamp keeps a
    rounding error (``center + half * 1.0`` may exceed ``high`` by one ulp) or a policy
    that does not clip from ever leaving the bounds.
    """

    def __init__(self, policy: nn.Module, low: Sequence[float], high: Sequence[float]):
        super().__init__()
        self.policy = policy
        self.register_buffer("low", torch.as_tensor(np.asarray(low, np.float32)))
        self.register_buffer("high", torch.as_tensor(np.asarray(high, np.float32)))

    def forward(self, obs: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(self.policy(obs), self.low), self.high)


@dataclass(frozen=True)
class ExportSpec:
    """What the manifest says about the policy, besides what export measures itself.

    ``obs_layout`` is :meth:`o2o.envs.spaces.ObsLayout.to_dict` (keys, shapes, slices in
    order); ``policy``, ``env``, ``dataset`` and ``evaluation`` are provenance copied into
    the manifest; ``runtime`` holds the guard defaults (``safe_action``, ``max_delta``,
    ``deadline_s``) the runtime uses unless told otherwise.
    """

    obs_layout: list[dict]
    action_low: Sequence[float]
    action_high: Sequence[float]
    control_frequency_hz: float | None
    controller_type: str | None
    policy: dict
    env: dict
    dataset: dict | None = None
    evaluation: dict = field(default_factory=dict)
    observation_space: dict | None = None
    observations_source: str = "given"
    runtime: dict = field(default_factory=lambda: {"safe_action": None, "max_delta": None, "deadline_s": None})
    notes: list[str] = field(default_factory=list)


@dataclass
class ExportReport:
    """A finished export: where it is, its manifest, and the measured parity."""

    out_dir: str
    manifest: dict
    parity: dict[str, float]
    seconds: float


@contextlib.contextmanager
def _quiet_exporters():
    # torch's exporters warn about things that do not apply here (TorchScript deprecation,
    # optional torchvision ops, pytree internals); real errors still raise.
    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "torch.__trace")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike, opset: int = OPSET) -> None:
    """``model`` to an ONNX file with a dynamic batch dimension (torch.export-based exporter)."""
    import onnx

    with _quiet_exporters():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            external_data=False,
            verbose=False,
            optimize=True,
        )
        program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    got = {o.domain or "": o.version for o in proto.opset_import}.get("")
    if got != int(opset):
        raise ExportRefused(f"ONNX export {str(path)!r} has opset {got}, not the pinned {opset}")


def export_torchscript(model: nn.Module, example: Tensor, path: str | os.PathLike) -> None:
    """``model`` traced to a TorchScript file (loads in C++ with ``torch::jit::load``)."""
    with _quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _max_diff(got: np.ndarray, want: np.ndarray) -> tuple[float, int, int]:
    if got.shape != want.shape:
        return float("inf"), -1, -1
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    d[np.isnan(d)] = np.inf  # NaN on one side only is a mismatch (both NaN was refused earlier)
    i = int(np.argmax(d))
    row, col = divmod(i, got.shape[1]) if got.ndim == 2 else (i, 0)
    return float(d.reshape(-1)[i]), row, col


def check_parity(
    reference: nn.Module,
    observations: np.ndarray,
    onnx_path: str | os.PathLike,
    torchscript_path: str | os.PathLike,
    tolerance: float = TOLERANCE,
    source: str = "given observations",
) -> tuple[dict[str, float], np.ndarray]:
    """Max abs diff of onnxruntime and TorchScript (loaded from their files) vs ``reference`` (eager torch).

    Returns ``({"onnxruntime": d1, "torchscript": d2}, reference actions)``; raises
    :class:`ExportRefused` naming the file, the diff and where it occurred when a diff
    exceeds ``tolerance``, or when ``reference`` itself is not deterministic or finite.
    """
    import onnxruntime as ort

    obs = np.ascontiguousarray(observations, np.float32)
    x = torch.from_numpy(obs)
    with torch.no_grad():
        want = reference(x).numpy()
        again = reference(x).numpy()
    if not np.array_equal(want, again, equal_nan=True):
        d = float(np.nanmax(np.abs(want - again)))
        raise ExportRefused(
            f"the torch policy is not deterministic (two calls on the same {len(obs)} observations "
            f"differ by up to {d:.3g}): export the deterministic mode of the actor"
        )
    if not np.all(np.isfinite(want)):
        rows = np.flatnonzero(~np.isfinite(want).all(1))
        raise ExportRefused(
            f"the torch policy returns non-finite actions on {len(rows)} of the {len(obs)} "
            f"observations from {source} (first at row {rows[0]}); the checkpoint is broken"
        )

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    with _quiet_exporters():
        scripted = torch.jit.load(str(torchscript_path), map_location="cpu")

    def run_onnx(batch: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def run_ts(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return scripted(torch.from_numpy(batch)).numpy()

    diffs: dict[str, float] = {}
    single = min(SINGLE_ROWS, len(obs))
    for name, path, run in (("onnxruntime", onnx_path, run_onnx), ("torchscript", torchscript_path, run_ts)):
        got = run(obs)
        worst = _max_diff(got, want)
        ones = np.concatenate([run(obs[i : i + 1]) for i in range(single)]) if single else want[:0]
        worst_one = _max_diff(ones, want[:single])
        worst = max(worst, worst_one, key=lambda t: t[0])
        diffs[name] = worst[0]
        if not worst[0] <= tolerance:
            where = (
                f"shape {got.shape} != {want.shape}"
                if worst[1] < 0
                else f"at observation row {worst[1]}, action dim {worst[2]}"
            )
            raise ExportRefused(
                f"export refused: {name} output of {str(path)!r} differs from the torch policy by "
                f"max abs diff {worst[0]:.3g} > tolerance {tolerance:g} ({where}) on {len(obs)} "
                f"observations from {source}"
            )
    return diffs, want


def versions() -> dict[str, str | None]:
    """Versions of what produced an export (recorded in the manifest)."""
    return {
        **package_versions(("o2o", "torch", "onnx", "onnxruntime", "onnxscript", "numpy")),
        "python": platform.python_version(),
        "platform": sys.platform,
    }


def _prepare_destination(out_dir: Path) -> None:
    foreign = out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).exists()
    if out_dir.exists() and (not out_dir.is_dir() or foreign):
        raise ExportRefused(f"destination {str(out_dir)!r} exists and is not an o2o export folder; choose another out=")


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as None (JSON has no NaN; a check's figures can be NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_onnx_metadata(path: str | os.PathLike, entries: Mapping[str, str]) -> None:
    """Set ``metadata_props`` entries of an ONNX file (replacing entries of the same keys; the graph is untouched)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    tmp = Path(str(path) + ".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)


def seal_export(
    folder: str | os.PathLike, manifest: Mapping[str, Any], files: Sequence[str], signing_key: bytes | str | None = None
) -> dict[str, Any]:
    """Hash ``files``, seal the manifest into its ONNX model, sign it with ``signing_key`` if given,
    and write ``manifest.json``; returns the manifest as written (see :mod:`o2o.deploy.manifest`).

    The seal holds the digest of every section as it will be written (``files`` without the
    ONNX file's own entry); the ONNX file is hashed after the seal is in it, so the manifest's
    hash of the model covers the seal, and the signature covers both.
    """
    folder = Path(folder)
    m = json.loads(json.dumps(_json_safe(dict(manifest)), allow_nan=False))  # sealed exactly as written
    m.pop(SIGNATURE_SECTION, None)
    onnx_name = m["onnx"]["file"]
    if onnx_name not in files:
        raise ValueError(f"seal_export: the ONNX file {onnx_name!r} is not among the files {list(files)}")
    m["files"] = hash_files(folder, [n for n in files if n != onnx_name])
    write_onnx_metadata(folder / onnx_name, {SEAL_KEY: seal_text(m)})
    m["files"] = hash_files(folder, files)
    if signing_key is not None:
        m[SIGNATURE_SECTION] = sign(seal_digests(m), sha256_file(folder / onnx_name), signing_key)
    check_manifest(m, f"export {str(folder)!r}")
    write_manifest(folder, m)
    return m


def export_policy(
    policy: nn.Module,
    out_dir: str | os.PathLike,
    observations: np.ndarray,
    spec: ExportSpec,
    *,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
    reference_rows: int = 256,
    check: Callable[[Path], Mapping[str, Any]] | None = None,
    signing_key: bytes | str | None = None,
) -> ExportReport:
    """Export ``policy`` (raw obs -> env-unit actions) to ``out_dir``, verified; see the module docstring.

    ``observations`` ``[N, obs_dim]``: recorded observations the parity check runs on.
    ``check(staging_dir)`` runs on the finished export before it is moved into place; its
    result is stored under ``evaluation.closed_loop`` and it may raise :class:`ExportRefused`.
    ``signing_key``: sign the export (HMAC-SHA256) so runtimes given the key accept it.
    An existing export at ``out_dir`` is replaced only when the new one passed every check.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    obs = np.asarray(observations, np.float32)
    dim = spec.obs_layout[-1]["stop"] if spec.obs_layout else 0
    if obs.ndim != 2 or len(obs) == 0 or obs.shape[1] != dim:
        raise ExportRefused(
            f"parity observations have shape {obs.shape}; need [N >= 1, {dim}] (the observation layout "
            f"{[f['key'] for f in spec.obs_layout]})"
        )
    finite = np.isfinite(obs).all(1)
    obs = obs[finite]
    if len(obs) == 0:
        raise ExportRefused(f"none of the {len(finite)} parity observations from {spec.observations_source} is finite")
    act_dim = len(spec.action_low)
    graph = ExportGraph(policy, spec.action_low, spec.action_high).eval().requires_grad_(False)
    with torch.no_grad():
        probe = graph(torch.from_numpy(obs[:2]))
    if probe.shape != (min(2, len(obs)), act_dim):
        raise ExportRefused(
            f"the policy maps [N, {dim}] observations to {tuple(probe.shape)}, not [N, {act_dim}] "
            "actions (action bounds)"
        )
    _prepare_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        example = torch.from_numpy(np.ascontiguousarray(obs[:2] if len(obs) >= 2 else np.repeat(obs, 2, 0)))
        try:
            export_onnx(graph, example, staging / ONNX_NAME, opset)
            export_torchscript(graph, example, staging / TORCHSCRIPT_NAME)
        except ExportRefused:
            raise
        except Exception as e:  # the exporters raise many types; say which step failed
            raise ExportRefused(f"export refused: the policy could not be exported ({type(e).__name__}: {e})") from e
        diffs, want = check_parity(
            graph, obs, staging / ONNX_NAME, staging / TORCHSCRIPT_NAME, tolerance, spec.observations_source
        )
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(len(obs), size=min(reference_rows, len(obs)), replace=False))
        np.savez(staging / REFERENCE_NAME, observations=obs[pick], actions=want[pick])
        manifest = build_manifest(spec, obs, act_dim, diffs, tolerance, opset, len(pick))
        files = [ONNX_NAME, TORCHSCRIPT_NAME, REFERENCE_NAME]
        manifest = seal_export(staging, manifest, files, signing_key)
        _load_in_runtime(staging, signing_key)
        if check is not None:
            manifest["evaluation"]["closed_loop"] = dict(check(staging))
            manifest = seal_export(staging, manifest, files, signing_key)  # the check's result is sealed too
            _load_in_runtime(staging, signing_key)  # the folder as it will be deployed
        _replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(str(out_dir), manifest, diffs, time.perf_counter() - start)


def build_manifest(
    spec: ExportSpec,
    obs: np.ndarray,
    act_dim: int,
    diffs: Mapping[str, float],
    tolerance: float,
    opset: int,
    reference_count: int,
) -> dict[str, Any]:
    """The manifest without its ``files`` section (see :mod:`o2o.deploy.manifest`)."""
    freq = spec.control_frequency_hz
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "policy": dict(spec.policy),
        "observation": {
            "dim": int(obs.shape[1]),
            "dtype": "float32",
            "layout": list(spec.obs_layout),
            "keys": [f["key"] for f in spec.obs_layout],
            "space": spec.observation_space,
        },
        "action": {
            "dim": int(act_dim),
            "dtype": "float32",
            "low": bounds_to_json(spec.action_low),
            "high": bounds_to_json(spec.action_high),
        },
        "control": {
            "frequency_hz": None if freq is None else float(freq),
            "period_s": None if not freq else 1.0 / float(freq),
            "controller_type": spec.controller_type,
        },
        "env": dict(spec.env),
        "dataset": None if spec.dataset is None else dict(spec.dataset),
        "evaluation": dict(spec.evaluation),
        "onnx": {
            "file": ONNX_NAME,
            "opset": int(opset),
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "input_shape": ["batch", int(obs.shape[1])],
            "output_shape": ["batch", int(act_dim)],
        },
        "torchscript": {"file": TORCHSCRIPT_NAME, "method": "trace", "input_shape": ["batch", int(obs.shape[1])]},
        "parity": {
            "tolerance": float(tolerance),
            "observations": int(len(obs)),
            "source": spec.observations_source,
            "max_abs_diff": {k: float(v) for k, v in diffs.items()},
            "reference_file": REFERENCE_NAME,
            "reference_rows": int(reference_count),
        },
        "runtime": {
            "safe_action": spec.runtime.get("safe_action"),
            "max_delta": spec.runtime.get("max_delta"),
            "deadline_s": spec.runtime.get("deadline_s"),
        },
        "notes": list(spec.notes),
        "versions": versions(),
    }


def _load_in_runtime(folder: Path, signing_key: bytes | str | None = None) -> None:
    """The export must load in the controller-side runtime (hashes, seal, signature, self-test, guard defaults)."""
    from o2o.deploy.runtime import PolicyRuntime

    try:
        PolicyRuntime(folder, signing_key=signing_key)
    except ValueError as e:  # ManifestError, bad guard defaults
        raise ExportRefused(f"export refused: the runtime does not accept it: {e}") from e


def remove_abandoned(out_dir: str | os.PathLike) -> list[str]:
    """Remove what a killed export to ``out_dir`` left beside it: staging and replaced-export folders of
    processes that are gone, and an empty ``out_dir``. Returns the paths removed."""
    out_dir = Path(out_dir)
    removed = []
    # Killed between _replace's two renames: the previous export is whole in .old; put it back.
    for old in sorted(out_dir.parent.glob(f".{out_dir.name}.old-*")):
        pid = old.name.rpartition("-")[2]
        if not out_dir.exists() and not (pid.isdigit() and alive(int(pid))):
            os.replace(old, out_dir)
            removed.append(f"{old} (restored as {out_dir})")
    for d in list(out_dir.parent.glob(f".{out_dir.name}.staging-*")) + list(
        out_dir.parent.glob(f".{out_dir.name}.old-*")
    ):
        pid = d.name.rpartition("-")[2]
        if pid.isdigit() and alive(int(pid)):
            continue  # an export in progress in another process
        shutil.rmtree(d, ignore_errors=True)
        removed.append(str(d))
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
        removed.append(str(out_dir))
    return removed


def _replace(staging: Path, out_dir: Path) -> None:
    """Move ``staging`` to ``out_dir``, replacing an earlier export there only now that the new one is complete."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
