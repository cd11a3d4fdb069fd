"""The stage DAG: stages are functions of named artifacts; the runner derives the order,
skips what is unchanged, resumes what was interrupted and records everything.

A :class:`Stage` declares the artifacts it ``reads`` and ``writes`` (``dataset``,
``checkpoint``, ``evaluation``, ``gate``, ...). The runner orders stages so that every
artifact is written before it is read, and refuses a graph with a cycle, an artifact
nobody writes, two writers of one artifact or an unknown stage before anything runs.

Each stage gets a **fingerprint**: a hash of its name, its resolved config and the
fingerprints of the artifacts it reads. Finished stages are recorded in a cache
(``<state_dir>/stages/<fingerprint>.json``, outside the per-run folders), so a later run
whose stage has the same fingerprint reuses the recorded outputs instead of running it:
that is both "skip what is unchanged" and "resume after an interruption". When an input
changed (the dataset grew), the fingerprint changes and the stage reruns, and so does
everything downstream, whose inputs changed with it.

Some artifacts are mutable assets rather than files: the dataset grows. A stage may
``refresh`` its outputs when it is skipped (collect reports the store's *current*
version, which later runs or other tools may have grown), so downstream fingerprints
follow the data, not the cache.

A stage can stop the pipeline on purpose (the gate) by raising :class:`StageFailed`:
the stages that depend on it are marked ``blocked``, the others still run, and the run
ends with a non-zero status.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from o2o.pipeline.config import plain

# What a stage's function returns: artifact name -> JSON-able value. A value may carry its
# own "fingerprint"; otherwise the fingerprint is the hash of the value.
Outputs = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: ``run(ctx) -> {artifact: value}`` for every name in ``writes``."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    run: Callable[["StageContext"], Outputs]
    #: optional: re-derive the outputs of a skipped stage (e.g. the dataset's current version)
    refresh: Callable[["StageContext", Outputs], Outputs] | None = None
    #: optional: whether recorded outputs are still usable (files exist, hashes match)
    valid: Callable[[Outputs], bool] | None = None
    doc: str = ""
    #: artifacts used when some selected stage writes them (ordered after it), never required; a
    #: failed or blocked writer does not block this stage (the report shows what did not run)
    optional: tuple[str, ...] = ()


@dataclass
class StageContext:
    """What a stage function sees: its config, its inputs, where to write, how to report."""

    stage: str
    config: Any  # the stage's config (a DictConfig or a plain dict)
    inputs: dict[str, Any]
    run_dir: Path  # the run's folder; the stage writes under run_dir / stage
    log: Callable[[str], None] = print

    @property
    def out_dir(self) -> Path:
        d = self.run_dir / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d


class StageFailed(Exception):
    """A stage decided the pipeline must not go on past it (e.g. the gate failed).

    ``outputs`` are still recorded (the gate's decision and reasons are an artifact)."""

    def __init__(self, message: str, outputs: Outputs | None = None):
        super().__init__(message)
        self.outputs = outputs or {}


class GraphError(ValueError):
    """The stage graph is invalid (cycle, missing input, duplicate writer, unknown stage)."""


def fingerprint(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def artifact_fingerprint(value: Any) -> str:
    """An artifact's own ``fingerprint`` field when it has one, else the hash of its value."""
    if isinstance(value, Mapping) and isinstance(value.get("fingerprint"), str):
        return value["fingerprint"]
    return fingerprint(value)


def order_stages(stages: Sequence[Stage], available: Sequence[str] = ()) -> list[Stage]:
    """Stages in an order where every artifact is written before it is read.

    ``available``: artifacts given from outside (none by default). Raises :class:`GraphError`
    naming the problem: duplicate stage names, two writers of one artifact, an input nobody
    writes, or a cycle (with the stages on it). Ties keep the listed order.
    """
    names = [s.name for s in stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GraphError(f"stage names used twice: {dup}")
    writer: dict[str, str] = {a: "<given>" for a in available}
    for s in stages:
        for a in s.writes:
            if a in writer:
                raise GraphError(f"artifact {a!r} is written by both {writer[a]!r} and {s.name!r}")
            writer[a] = s.name
    for s in stages:
        missing = [a for a in s.reads if a not in writer]
        if missing:
            raise GraphError(f"stage {s.name!r} reads {missing}, which no selected stage writes "
                             f"(writers: {sorted(writer.items())}); add the stage that writes it or give it")
    deps = {s.name: {writer[a] for a in (*s.reads, *s.optional) if a in writer} - {"<given>"} for s in stages}
    done: list[str] = []
    pending = list(names)
    while pending:
        ready = [n for n in pending if deps[n] <= set(done)]
        if not ready:
            raise GraphError(f"the stages {pending} form a cycle through their artifacts: "
                             + "; ".join(f"{n} reads from {sorted(deps[n] - set(done))}" for n in pending))
        done.append(ready[0])
        pending.remove(ready[0])
    by_name = {s.name: s for s in stages}
    return [by_name[n] for n in done]


def downstream(stages: Sequence[Stage], roots: set[str]) -> set[str]:
    """The stages that (transitively) read an artifact written by one of ``roots``."""
    out, frontier = set(), set(roots)
    while frontier:
        produced = {a for s in stages if s.name in frontier for a in s.writes}
        frontier = {s.name for s in stages if set(s.reads) & produced} - out
        out |= frontier
    return out


@dataclass
class StageRecord:
    """What the manifest says about one stage of a run."""

    name: str
    status: str  # ran | skipped | failed | blocked | error
    fingerprint: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # artifact -> fingerprint
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""
    started: str = ""


class StageCache:
    """Finished stages by fingerprint, in ``<state_dir>/stages/``: one JSON per stage, written
    atomically after the stage finished (an interrupted stage leaves no record)."""

    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir) / "stages"

    def get(self, fp: str) -> dict | None:
        p = self.dir / f"{fp}.json"
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record is a miss: the stage reruns

    def put(self, fp: str, record: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{fp}.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, self.dir / f"{fp}.json")


@dataclass
class RunResult:
    """A finished (or stopped) run: its records in order, and whether everything passed."""

    run_dir: Path
    records: list[StageRecord]
    artifacts: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(r.status in ("ran", "skipped") for r in self.records)

    def record(self, name: str) -> StageRecord:
        return next(r for r in self.records if r.name == name)

    def to_dict(self) -> dict:
        """The run manifest's stage part: every stage's status, inputs, outputs, fingerprint, timing."""
        from dataclasses import asdict

        return {"run_dir": str(self.run_dir), "ok": self.ok, "stages": [asdict(r) for r in self.records]}

    def write(self, path: str | os.PathLike, **extra: Any) -> None:
        """Write the manifest (``to_dict`` plus ``extra``) atomically to ``path``."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({**extra, **self.to_dict()}, indent=1, default=str))
        os.replace(tmp, path)


class Pipeline:
    """A validated DAG of stages. ``run`` executes it; ``plan`` says what would run."""

    def __init__(self, stages: Sequence[Stage], given: Mapping[str, Any] | None = None):
        self.given = dict(given or {})
        self.stages = order_stages(stages, available=list(self.given))

    def stage_fingerprint(self, stage: Stage, config: Any, inputs: Mapping[str, Any]) -> str:
        names = [a for a in (*stage.reads, *stage.optional) if a in inputs]
        return fingerprint({"stage": stage.name, "config": plain(config),
                            "inputs": {a: artifact_fingerprint(inputs[a]) for a in names}})

    def plan(self, configs: Mapping[str, Any], cache: StageCache) -> list[tuple[str, str]]:
        """``(stage, what happens)`` for each stage, as far as it can be known before running:
        a stage whose inputs come from a stage that will run can only be decided then."""
        artifacts, out, will_run = dict(self.given), [], set()
        for s in self.stages:
            if (set(s.reads) | set(s.optional)) & {a for r in self.stages if r.name in will_run for a in r.writes}:
                out.append((s.name, "run if its inputs change (decided after upstream stages)"))
                will_run.add(s.name)
                continue
            fp = self.stage_fingerprint(s, configs.get(s.name), artifacts)
            hit = cache.get(fp)
            if hit is not None and (s.valid is None or s.valid(hit["outputs"])):
                artifacts.update(hit["outputs"])
                out.append((s.name, f"skip (unchanged, fingerprint {fp[:12]})"))
            else:
                out.append((s.name, "run" + (" (no finished record: new, changed, interrupted or failed)" if hit is None else " (recorded outputs gone)")))
                will_run.add(s.name)
        return out

    def run(self, configs: Mapping[str, Any], cache: StageCache, run_dir: str | os.PathLike,
            log: Callable[[str], None] = print, force: Sequence[str] = (),
            manifest: Callable[[RunResult], None] | None = None) -> RunResult:
        """Run every stage in order (skipping unchanged ones); ``force`` reruns the named stages.

        ``manifest(result)`` is called after every stage, so an interrupted run leaves a
        manifest of what it finished.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        result = RunResult(run_dir, [], dict(self.given))
        blocked: set[str] = set()
        for s in self.stages:
            if s.name in blocked:
                result.records.append(StageRecord(s.name, "blocked", message="an upstream stage stopped the run"))
                _call(manifest, result)
                continue
            inputs = {a: result.artifacts[a] for a in (*s.reads, *s.optional) if a in result.artifacts}
            fp = self.stage_fingerprint(s, configs.get(s.name), inputs)
            rec = StageRecord(s.name, "ran", fp, {a: artifact_fingerprint(v) for a, v in inputs.items()},
                              started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            ctx = StageContext(s.name, configs.get(s.name), inputs, run_dir, log)
            hit = None if s.name in force else cache.get(fp)
            t0 = time.perf_counter()
            if hit is not None and (s.valid is None or s.valid(hit["outputs"])):
                outputs = s.refresh(ctx, hit["outputs"]) if s.refresh else hit["outputs"]
                rec.status, rec.message = "skipped", f"unchanged since run {hit.get('run_dir', '?')}"
                log(f"[{s.name}] skipped: config and inputs unchanged (fingerprint {fp[:12]})")
            else:
                log(f"[{s.name}] running")
                try:
                    outputs = s.run(ctx)
                except StageFailed as e:
                    rec.status, rec.message, rec.outputs = "failed", str(e), e.outputs
                    rec.seconds = time.perf_counter() - t0
                    result.artifacts.update(e.outputs)
                    result.records.append(rec)
                    blocked |= downstream(self.stages, {s.name})
                    log(f"[{s.name}] FAILED: {e}")
                    _call(manifest, result)
                    continue
                except BaseException as e:
                    rec.status, rec.message = "error", f"{type(e).__name__}: {e}"
                    rec.seconds = time.perf_counter() - t0
                    rec.outputs = {"traceback": traceback.format_exc(limit=20)}
                    result.records.append(rec)
                    _call(manifest, result)
                    raise
                missing = [a for a in s.writes if a not in outputs]
                if missing:
                    raise RuntimeError(f"stage {s.name!r} did not produce {missing} (it declares writes={list(s.writes)})")
                cache.put(fp, {"stage": s.name, "fingerprint": fp, "outputs": outputs, "run_dir": str(run_dir),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            rec.outputs, rec.seconds = outputs, time.perf_counter() - t0
            result.artifacts.update(outputs)
            result.records.append(rec)
            _call(manifest, result)
        return result


def _call(fn, *args) -> None:
    if fn is not None:
        fn(*args)
