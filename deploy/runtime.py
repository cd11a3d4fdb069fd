"""The controller-side runtime: an exported policy behind safety guards, with onnxruntime and NumPy only.

    from o2o.deploy.runtime import PolicyRuntime
    rt = PolicyRuntime("runs/pretrain/iql-.../export/best-3000")   # hashes checked, self-test run
    action = rt.act(obs)                  # flat float32 vector, or {field: value} by the manifest's layout
    result = rt.step(obs)                 # action + Guard flags + inference time

This module must run on a robot computer without training dependencies: it never
imports torch, Lightning, Hydra or zarr (tests/deploy check it in a process where
``import torch`` fails).

What loading refuses (:class:`~o2o.deploy.manifest.ManifestError`), before any step:

- a file of the export changed, missing or swapped (SHA-256 and size in ``manifest.json``);
- ``manifest.json`` changed after export: its sections are sealed into the ONNX model's
  metadata, and any section changed, added or removed is refused by name (bounds, safe
  action, layout, the reference the self-test uses...); an export without a seal (format 1)
  is refused too (see :mod:`o2o.deploy.manifest`);
- with a signing key (``signing_key=`` or ``key_file=``): an unsigned export, or one signed
  with another key. Without a key a signature is not checked;
- a model that does not reproduce its recorded reference actions (the self-test).

Observations must be real numbers: bool, integer or floating arrays (or sequences of such
numbers). Strings, bytes, complex numbers, objects and dates are refused by field or position
(:class:`ObservationError`), never converted: ``np.asarray(["1"], float)`` would parse text and
a complex value would silently lose its imaginary part.

Guards, in the order they act on each step:

1. a non-finite observation (NaN/inf) gives the **safe action** and a :class:`GuardWarning`
   naming the fields;
2. inference slower than the deadline (default: the control period from the manifest)
   trips the **watchdog**: the late action is dropped and the safe action issued (with
   ``watchdog_latch=True`` it stays tripped until :meth:`PolicyRuntime.reset`);
3. a non-finite action gives the safe action;
4. the action is **clamped** to the manifest's bounds;
5. its change from the previous issued action is **rate-limited** to ``max_delta`` per
   step (after :meth:`~PolicyRuntime.reset` the previous action is the safe action: the
   robot is assumed at rest).

The safe action itself is issued as is (not rate-limited: it is the stop command). It
defaults to zero clipped into the bounds — "hold" for delta-pose and velocity
controllers; give another (e.g. a closed gripper) where zero is not safe.

The watchdog checks an inference after it returns; it cannot pre-empt one that hangs.
A controller that must act on time whatever happens queries the action server
(:mod:`o2o.deploy.server`) with a receive timeout and falls back to its own safe action.
"""

from __future__ import annotations

import enum
import hashlib
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from o2o.deploy.manifest import (
    SEAL_KEY,
    ManifestError,
    bounds_from_json,
    check_seal,
    check_signature,
    load_manifest,
    read_signing_key,
)

_FROM_MANIFEST: Any = object()  # "use the export's default" (None is a meaningful value for several settings)


class Guard(enum.IntFlag):
    """What the guards did on a step (bits; the action server sends them as a uint32)."""

    NONE = 0
    CLAMPED = 1  # the policy's action lay outside the bounds and was clamped
    RATE_LIMITED = 2  # the change from the previous action was cut to max_delta
    NONFINITE_OBS = 4  # NaN/inf in the observation: safe action
    NONFINITE_ACTION = 8  # NaN/inf from the policy: safe action
    WATCHDOG = 16  # inference slower than the deadline: safe action
    LATCHED = 32  # the watchdog tripped earlier and latches: safe action until reset()


#: Flags under which the issued action is the safe action.
SAFE_FLAGS = Guard.NONFINITE_OBS | Guard.NONFINITE_ACTION | Guard.WATCHDOG | Guard.LATCHED
CLAMPED, RATE_LIMITED = int(Guard.CLAMPED), int(Guard.RATE_LIMITED)
_BITS = tuple((int(g), g.name) for g in Guard if g is not Guard.NONE)
_GUARDS = tuple(Guard(i) for i in range((CLAMPED | RATE_LIMITED) + 1))  # Guard(int) is slow; these recur every step


class GuardWarning(RuntimeWarning):
    """A guard replaced the policy's action (non-finite input/output, watchdog)."""


class ObservationError(ValueError):
    """An observation of the wrong shape, type or fields: an integration error, not a transient fault."""


class StepResult(NamedTuple):
    """One guarded step: the action to send, what the guards did, and how long inference took.

    (A named tuple, not a dataclass: it is made on every control step, and that is cheaper.)
    """

    action: np.ndarray
    flags: Guard
    inference_s: float
    raw_action: np.ndarray | None = None  # the policy's output (None if it did not run)

    @property
    def safe(self) -> bool:
        """True when ``action`` is the safe action (a guard replaced the policy)."""
        return bool(self.flags & SAFE_FLAGS)


#: Array kinds a real-valued input may have: bool, signed and unsigned integers, floats.
REAL_KINDS = frozenset("biuf")
_KIND_NAMES = {
    "U": "strings",
    "S": "bytes",
    "c": "complex numbers",
    "O": "Python objects",
    "M": "dates",
    "m": "time intervals",
    "V": "raw/structured records",
}


def _kind(dtype: np.dtype) -> str:
    return f"dtype {dtype} ({_KIND_NAMES.get(dtype.kind, 'not numbers')})"


def _first_nonreal(values: Any) -> tuple[int, Any] | None:
    """(flat position, value) of the first element of a nested list/tuple that is not a real number."""
    flat = 0
    stack = [iter(values)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, (list, tuple)):
                stack.append(iter(v))
                break
            if not (isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating))):
                return flat, v
            flat += 1
        else:
            stack.pop()
    return None


def real_array(
    value: Any, what: str, error: type[Exception] = ValueError, layout: list[dict] | None = None
) -> np.ndarray:
    """``value`` as an array of a real kind (bool/int/uint/float), else ``error`` naming ``what``, the
    type and, for a list or tuple, the first value that is not a real number (and its ``layout`` field)."""
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as e:  # ragged nested sequences
        raise error(f"{what} is not an array of numbers ({type(value).__name__}: {e})") from None
    if a.dtype.kind in REAL_KINDS:
        return a
    where = ""
    found = _first_nonreal(value) if isinstance(value, (list, tuple)) else None
    if found is not None:
        field = next((f["key"] for f in layout or () if f["start"] <= found[0] < f["stop"]), None)
        where = (
            f" (value [{found[0]}]"
            + (f", field {field!r}," if field else "")
            + f" is a {type(found[1]).__name__}: {found[1]!r})"
        )
    raise error(
        f"{what} has {_kind(a.dtype)}{where}: "
        + (
            "observations must be real numbers (bool, int or float)"
            if error is ObservationError
            else "it must be real numbers"
        )
    )


def _vector(value: Any, n: int, what: str) -> np.ndarray:
    a = real_array(value, what).astype(np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{what}: expected a number or {n} values, got shape {a.shape}")
    return a


class PolicyRuntime:
    """An exported policy (ONNX via onnxruntime) behind the guards described in the module docstring.

    Args:
        export_dir: the folder ``o2o export`` wrote (``manifest.json``, ``policy.onnx``...).
        safe_action: action issued when a guard fires (env units, within bounds);
            default: the export's ``runtime.safe_action``, else zero clipped into the bounds.
        max_delta: largest change per step (a number or one per action dim, env units);
            ``None`` disables the rate limit. Default: the export's ``runtime.max_delta``.
        deadline_s: inference time that trips the watchdog; default: the export's
            ``runtime.deadline_s``, else the control period. ``None`` with no control
            frequency in the manifest disables the watchdog.
        watchdog: False disables the watchdog whatever the deadline.
        watchdog_latch: a tripped watchdog keeps issuing the safe action until :meth:`reset`.
        verify: check every file's SHA-256 against the manifest (refuse a modified file).
        self_test: run the ONNX model on the export's recorded observations and refuse it
            unless it reproduces the recorded actions within the export's tolerance.
        num_threads: onnxruntime intra-op threads (1: a single observation gains nothing
            from a thread pool, and the controller's own threads keep their cores).
        signing_key / key_file: this deployment's signing key (bytes or text, or a file holding
            it): the export must carry a valid signature made with it. Without either, a
            signature is not checked (``signed`` says whether the export has one).

    The manifest's seal is always checked (``verify=False`` skips only the files' hashes).
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        *,
        safe_action: Any = _FROM_MANIFEST,
        max_delta: Any = _FROM_MANIFEST,
        deadline_s: Any = _FROM_MANIFEST,
        watchdog: bool = True,
        watchdog_latch: bool = False,
        verify: bool = True,
        self_test: bool = True,
        num_threads: int = 1,
        signing_key: bytes | str | None = None,
        key_file: str | os.PathLike | None = None,
    ):
        import onnxruntime as ort  # here, so `import o2o.deploy.runtime` alone needs only NumPy

        self.export_dir = Path(export_dir)
        where = f"export {str(self.export_dir)!r}"
        if signing_key is not None and key_file is not None:
            raise ValueError("PolicyRuntime: give signing_key or key_file, not both")
        if key_file is not None:
            signing_key = read_signing_key(key_file)
        self.manifest = load_manifest(self.export_dir, verify=verify)
        m = self.manifest
        self.obs_dim, self.act_dim = int(m["observation"]["dim"]), int(m["action"]["dim"])
        self.layout: list[dict] = list(m["observation"]["layout"])
        self.low = np.asarray(bounds_from_json(m["action"]["low"], "action.low"), np.float64)
        self.high = np.asarray(bounds_from_json(m["action"]["high"], "action.high"), np.float64)
        freq = m["control"].get("frequency_hz")
        self.period_s: float | None = 1.0 / float(freq) if freq else None
        defaults = m.get("runtime") or {}

        # The bytes that are hashed are the bytes that are loaded (no window to swap the file).
        onnx_name = m["onnx"]["file"]
        model_bytes = (self.export_dir / onnx_name).read_bytes()
        onnx_sha256 = hashlib.sha256(model_bytes).hexdigest()
        if verify and onnx_sha256 != m["files"].get(onnx_name, {}).get("sha256"):
            raise ManifestError(f"{where}: {onnx_name!r} changed while it was being loaded (hash mismatch)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ManifestError(f"{where}: onnxruntime cannot load {onnx_name!r}: {e}") from None
        # The manifest as exported, or nothing: its digests live in the model just loaded.
        sealed = check_seal(m, self._session.get_modelmeta().custom_metadata_map.get(SEAL_KEY), where)
        self.signed = isinstance(m.get("signature"), Mapping)
        self.signature_checked = signing_key is not None
        if signing_key is not None:
            check_signature(m, sealed, onnx_sha256, signing_key, where)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or inputs[0].shape[-1] != self.obs_dim or outputs[0].shape[-1] != self.act_dim:
            raise ManifestError(
                f"{where}: {onnx_name!r} maps {[i.shape for i in inputs]} -> "
                f"{[o.shape for o in outputs]}, the manifest says obs [batch, {self.obs_dim}] -> "
                f"action [batch, {self.act_dim}]"
            )
        self._buf = np.zeros((1, self.obs_dim), np.float32)
        self._feed = {inputs[0].name: self._buf}
        self._outputs = [outputs[0].name]
        self._low32, self._high32 = self.low.astype(np.float32), self.high.astype(np.float32)

        sa = defaults.get("safe_action") if safe_action is _FROM_MANIFEST else safe_action
        self.safe_action = self._check_safe_action(sa)
        md = defaults.get("max_delta") if max_delta is _FROM_MANIFEST else max_delta
        self.max_delta = None if md is None else _vector(md, self.act_dim, "max_delta")
        if self.max_delta is not None and not (np.all(np.isfinite(self.max_delta)) and np.all(self.max_delta > 0)):
            raise ValueError(f"max_delta must be finite and > 0 per dim, got {self.max_delta.tolist()}")
        dl = defaults.get("deadline_s") if deadline_s is _FROM_MANIFEST else deadline_s
        self.deadline_s: float | None = (float(dl) if dl is not None else self.period_s) if watchdog else None
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 seconds, got {self.deadline_s}")
        self.watchdog_latch = bool(watchdog_latch)
        self.counts: dict[str, int] = {g.name: 0 for g in Guard if g is not Guard.NONE}
        self.steps = 0
        self._md32 = None if self.max_delta is None else self.max_delta.astype(np.float32)
        self._safe32 = self.safe_action.astype(np.float32)
        self._lock = threading.Lock()
        self._tripped = False
        self._prev = self._safe32.copy()
        if self_test:
            self._self_test(where)

    # ------------------------------------------------------------------ loading
    def _check_safe_action(self, value: Any) -> np.ndarray:
        if value is None:
            return np.clip(np.zeros(self.act_dim), self.low, self.high)
        a = _vector(value, self.act_dim, "safe_action")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"safe_action must be finite, got {a.tolist()}")
        out = np.flatnonzero((a < self.low) | (a > self.high))
        if len(out):
            raise ValueError(
                f"safe_action {a.tolist()} lies outside the action bounds at dims {out.tolist()} "
                f"(low {self.low[out].tolist()}, high {self.high[out].tolist()})"
            )
        return a

    def _self_test(self, where: str) -> None:
        ref = self.manifest.get("parity", {}).get("reference_file")
        if not ref:
            return
        path = self.export_dir / ref
        if ref not in self.manifest["files"]:
            raise ManifestError(f"{where}: reference file {ref!r} is not hashed in the manifest")
        with np.load(path, allow_pickle=False) as data:
            obs, want = np.asarray(data["observations"], np.float32), np.asarray(data["actions"], np.float32)
        got = self.infer(obs)
        diff = float(np.max(np.abs(got - want))) if len(obs) else 0.0
        tol = float(self.manifest["parity"].get("tolerance", 1e-5))
        if not diff <= tol:
            raise ManifestError(
                f"{where}: self-test failed: onnxruntime here reproduces the {len(obs)} recorded "
                f"actions of {ref!r} only to max abs diff {diff:.3g} > {tol:g}"
            )

    # ------------------------------------------------------------------ observations
    @property
    def obs_keys(self) -> list[str]:
        """The observation fields, in the order they sit in the flat vector."""
        return [f["key"] for f in self.layout]

    def flatten(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The flat float32 observation assembled from named fields, in the manifest's layout order."""
        missing = [f["key"] for f in self.layout if f["key"] not in obs]
        if missing:
            raise ObservationError(f"observation lacks fields {missing}; the policy needs {self.obs_keys}")
        out = np.empty(self.obs_dim, np.float32)
        for f in self.layout:
            v = obs[f["key"]]
            if not (type(v) is np.ndarray and v.dtype.kind in REAL_KINDS):
                v = real_array(v, f"observation field {f['key']!r}", ObservationError)
            want = f["stop"] - f["start"]
            if v.size != want:
                raise ObservationError(
                    f"observation field {f['key']!r} has shape {v.shape} ({v.size} values), the "
                    f"policy needs shape {tuple(f['shape'])} ({want} values)"
                )
            out[f["start"] : f["stop"]] = v.reshape(-1)
        return out

    def _as_vector(self, obs: Any) -> np.ndarray:
        if isinstance(obs, Mapping):
            return self.flatten(obs)
        if type(obs) is np.ndarray and obs.dtype == np.float32 and obs.shape == (self.obs_dim,):
            return obs  # the common case, checked cheaply
        v = (
            obs
            if type(obs) is np.ndarray and obs.dtype.kind in REAL_KINDS
            else real_array(obs, "observation", ObservationError, self.layout)
        )
        if v.size != self.obs_dim or v.ndim > 2 or (v.ndim == 2 and v.shape[0] != 1):
            raise ObservationError(
                f"observation has shape {v.shape}, the policy needs ({self.obs_dim},) float32 "
                f"(fields {self.obs_keys}) or a dict of those fields"
            )
        return v.reshape(self.obs_dim).astype(np.float32, copy=False)

    def _nonfinite_fields(self, v: np.ndarray) -> list[str]:
        bad = ~np.isfinite(v)
        return [f["key"] for f in self.layout if bad[f["start"] : f["stop"]].any()]

    # ------------------------------------------------------------------ acting
    def infer(self, obs_batch: np.ndarray) -> np.ndarray:
        """The policy's actions for a batch ``[B, obs_dim]``: no guards (for checks and benchmarks)."""
        x = obs_batch
        if not (type(x) is np.ndarray and x.dtype.kind in REAL_KINDS):
            x = real_array(x, "observation batch", ObservationError)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise ObservationError(f"observation batch has shape {x.shape}, expected [B, {self.obs_dim}]")
        return self._session.run(self._outputs, {next(iter(self._feed)): x})[0]

    def _infer_one(self, obs: np.ndarray) -> np.ndarray:
        self._buf[0] = obs
        return self._session.run(self._outputs, self._feed)[0][0]

    def reset(self) -> None:
        """Start of an episode/run: the previous action becomes the safe action and a latched watchdog clears."""
        with self._lock:
            self._prev = self._safe32.copy()
            self._tripped = False

    def act(self, obs: Any) -> np.ndarray:
        """The guarded action (float32, env units) for one observation."""
        return self.step(obs).action

    def step(self, obs: Any) -> StepResult:
        """One guarded step for an observation (flat vector or dict of fields); see the module docstring."""
        v = self._as_vector(obs)
        with self._lock:
            self.steps += 1
            if self._tripped:
                return self._safe(Guard.LATCHED, 0.0, None, None)
            if not np.isfinite(v).all():
                return self._safe(
                    Guard.NONFINITE_OBS,
                    0.0,
                    None,
                    f"non-finite observation in fields {self._nonfinite_fields(v)}: safe action issued",
                )
            t0 = time.perf_counter()
            raw = self._infer_one(v)
            dt = time.perf_counter() - t0
            if self.deadline_s is not None and dt > self.deadline_s:
                self._tripped = self.watchdog_latch
                latched = " (latched until reset())" if self.watchdog_latch else ""
                return self._safe(
                    Guard.WATCHDOG,
                    dt,
                    raw,
                    f"watchdog: inference took {dt * 1e3:.2f} ms > deadline "
                    f"{self.deadline_s * 1e3:.2f} ms: safe action issued{latched}",
                )
            if not np.isfinite(raw).all():
                return self._safe(
                    Guard.NONFINITE_ACTION,
                    dt,
                    raw,
                    f"policy returned a non-finite action {raw.tolist()}: safe action issued",
                )
            # float32 throughout (what the policy returns and the controller receives); plain int
            # flags until the end: enum arithmetic would cost more than the checks themselves.
            flags, a = 0, raw
            lo, hi = self._low32, self._high32
            if (a < lo).any() or (a > hi).any():
                a = np.minimum(np.maximum(a, lo), hi)
                flags = CLAMPED
            if self._md32 is not None:
                step_lo, step_hi = self._prev - self._md32, self._prev + self._md32
                if (a < step_lo).any() or (a > step_hi).any():
                    a = np.minimum(np.maximum(np.minimum(np.maximum(a, step_lo), step_hi), lo), hi)
                    flags |= RATE_LIMITED
            a = a.copy() if a is raw else a  # never hand out a view of onnxruntime's output buffer
            self._prev = a
            if flags:
                self._count(flags)
            return StepResult(a, _GUARDS[flags], dt, raw)

    def _count(self, flags: int) -> None:
        for bit, name in _BITS:
            if flags & bit:
                self.counts[name] += 1

    def _safe(self, flag: Guard, dt: float, raw, message: str | None) -> StepResult:
        if message:
            warnings.warn(message, GuardWarning, stacklevel=3)
        self._prev = self._safe32.copy()
        self._count(int(flag))
        return StepResult(self._safe32.copy(), flag, dt, raw)

    @property
    def tripped(self) -> bool:
        """True while a latched watchdog holds the safe action."""
        return self._tripped


# ---------------------------------------------------------------------- fixed-rate loop
@dataclass
class LoopReport:
    """What a :class:`ControlLoop` run did: steps, timing and guard counts."""

    steps: int
    elapsed_s: float
    period_s: float | None
    overruns: int  # steps that finished after the next step was due
    missed_ticks: int  # whole periods that passed without a step during overruns
    guards: dict[str, int]
    inference_median_s: float
    inference_p99_s: float
    inference_max_s: float


class ControlLoop:
    """Runs observe -> guarded step -> send at a fixed rate on an absolute time grid.

    Step ``k`` starts at ``t0 + k * period`` (sleeping until then, so timing errors do
    not accumulate). A step that runs past the next step's start is counted as an
    overrun; the next step then starts at once and the grid is re-anchored there (no
    burst of catch-up steps).
    With ``realtime=False`` (simulation) the loop does not sleep; the runtime's watchdog
    still judges inference against the deadline.

    Args:
        runtime: a :class:`PolicyRuntime`.
        read_obs: returns the latest observation (flat vector or dict of fields).
        send_action: receives the action (float32, env units) and the :class:`StepResult`.
        rate_hz: loop rate; default: the export's control frequency.
    """

    def __init__(
        self,
        runtime: PolicyRuntime,
        read_obs: Callable[[], Any],
        send_action: Callable[[np.ndarray, StepResult], None],
        rate_hz: float | None = None,
        realtime: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.runtime = runtime
        self.read_obs, self.send_action = read_obs, send_action
        if rate_hz is None and runtime.period_s is None and realtime:
            raise ValueError("ControlLoop: the export has no control frequency; pass rate_hz")
        self.period_s = 1.0 / float(rate_hz) if rate_hz else runtime.period_s
        self.realtime = bool(realtime)
        self._clock, self._sleep = clock, sleep
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask a running loop (in another thread) to end after its current step."""
        self._stop.set()

    def run(self, steps: int | None = None, until: Callable[[], bool] | None = None) -> LoopReport:
        """Run ``steps`` steps, or until ``until()`` is true (checked after each send) or :meth:`stop`."""
        if steps is None and until is None:
            raise ValueError("ControlLoop.run: give steps, until, or both (an endless loop ends only by stop())")
        self._stop.clear()
        before = dict(self.runtime.counts)
        times: list[float] = []
        overruns = missed = n = 0
        t0 = start = self._clock()
        slot = 0
        while (steps is None or n < steps) and not self._stop.is_set():
            result = self.runtime.step(self.read_obs())
            self.send_action(result.action, result)
            times.append(result.inference_s)
            n += 1
            if (until is not None and until()) or (steps is not None and n >= steps):
                break
            slot += 1
            if self.realtime and self.period_s:
                now = self._clock()
                due = t0 + slot * self.period_s
                if now > due:
                    # Late: act again at once and re-anchor the grid here (acting a whole period
                    # late to stay on the old grid would be worse; a burst of catch-up steps too).
                    overruns += 1
                    missed += int((now - due) // self.period_s)
                    t0, slot = now, 0
                else:
                    self._sleep(due - now)
        elapsed = self._clock() - start  # from the first step (t0 is re-anchored after an overrun)
        t = np.asarray(times) if times else np.zeros(1)
        guards = {k: v - before.get(k, 0) for k, v in self.runtime.counts.items() if v - before.get(k, 0)}
        return LoopReport(
            n,
            elapsed,
            self.period_s,
            overruns,
            missed,
            guards,
            float(np.median(t)),
            float(np.percentile(t, 99)),
            float(t.max()),
        )
