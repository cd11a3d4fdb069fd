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

**Attempts.** A stage that starts running gets an attempt record
(``<state_dir>/attempts/<fingerprint>.json``: an id, the run folder, whatever the stage
saves in it as it goes), removed when the stage finishes. A stage that was interrupted
(killed, crashed) finds its record on the next run with the same fingerprint
(``ctx.attempt``, ``resumed`` true), so it can continue where it stopped instead of
starting over: collect completes the configured episodes, finetune resumes from its last
saved state, export cleans up what the killed attempt left. The run as a whole has an
attempt too (``ctx.run_attempt``, keyed by the stages and their configs), ended when the
run ends: a run interrupted after finetuning appended to the dataset resumes with the
dataset version it started from, because what its own stages appended is not new data.

Display settings (``progress`` keys) are not part of a fingerprint; the program is
(:func:`code_digest`, a hash of o2o's source and configs): after an upgrade or an edit, a
rerun runs again instead of silently reusing what an older program produced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from o2o.core.processes import alive
from o2o.pipeline.config import plain

# What a stage's function returns: artifact name -> JSON-able value. A value may carry its
# own "fingerprint"; otherwise the fingerprint is the hash of the value.
Outputs = dict[str, Any]
# Config keys that change what a person sees, how much is checked or when data is committed, not
# what a stage computes: left out of fingerprints (turning the dataset's checks off to get past a
# damaged episode must not re-collect). Names at any depth, and dotted paths from a stage's config.
DISPLAY_KEYS = frozenset({"progress"})
NON_SEMANTIC_PATHS = frozenset(
    {
        "dataset.verify",
        "collect.commit_every_s",
        "collect.commit_every_episodes",
        "finetune.commit_every_s",
        "finetune.commit_every_episodes",
    }
)


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
    #: optional: called once the stage's outputs are recorded and its attempt ended (remove what only a
    #: resumed attempt would have needed; a kill before this point still resumes)
    finished: Callable[["StageContext", Outputs], None] | None = None
    #: artifacts this stage grows in place (finetune appends online episodes to the dataset it reads); its
    #: outputs say by how much. The runner keeps the version the run started from for the stages that
    #: read the artifact, and the next run sees the growth as new data (collect's refresh)
    appends: tuple[str, ...] = ()
    #: whether a changed program (o2o's code digest) makes the recorded outputs stale. Collect's are
    #: not: its episodes are data, kept with their provenance; rerunning it after an upgrade would
    #: append the whole composition a second time
    code_sensitive: bool = True


@dataclass
class StageContext:
    """What a stage function sees: its config, its inputs, where to write, how to report, and its attempt.

    ``attempt`` is this stage's attempt record while it runs (see the module docstring):
    ``id``, ``run_dir`` (where the attempt began), ``resumed`` (an earlier attempt with the
    same fingerprint was interrupted; ``run_dir`` is then that attempt's) and anything the
    stage saved with :meth:`save_attempt`. None when the stage is skipped or planned.
    """

    stage: str
    config: Any  # the stage's config (a DictConfig or a plain dict)
    inputs: dict[str, Any]
    run_dir: Path  # the run's folder; the stage writes under run_dir / stage
    log: Callable[[str], None] = print
    attempt: dict | None = None
    cache: "StageCache | None" = None
    run_attempt: dict | None = None  # the whole run's attempt (``id``, ``resumed``, what stages saved in it)
    read_only: bool = False  # a plan: read the state, change nothing

    @property
    def out_dir(self) -> Path:
        d = self.run_dir / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def save_attempt(self, **fields: Any) -> None:
        """Record ``fields`` in this stage's attempt (atomically): what a resumed attempt needs to go on."""
        if self.attempt is None or self.cache is None or self.read_only:
            return
        self.attempt.update(fields)
        self.cache.put_attempt(self.attempt["fingerprint"], self.attempt)

    def artifact(self, name: str) -> Any:
        """Input ``name`` typed (:mod:`o2o.pipeline.artifacts`), or None when it is not an input."""
        from o2o.pipeline.artifacts import typed

        return typed(name, self.inputs.get(name))

    def open_attempts(self, stage: str | None = None) -> list[dict]:
        """Interrupted (unfinished) attempts recorded in the state, of ``stage`` (``"<run>"``: whole runs)
        or of every stage."""
        return [] if self.cache is None else self.cache.open_attempts(stage)

    def save_run_attempt(self, **fields: Any) -> None:
        """Record ``fields`` in the run's attempt (e.g. the dataset version the run started from)."""
        if self.run_attempt is None or self.cache is None:
            return
        self.run_attempt.update(fields)
        if self.read_only:
            return
        self.cache.put_attempt(self.run_attempt["fingerprint"], self.run_attempt)

    @property
    def tag(self) -> dict:
        """What this stage writes into the provenance of the episodes it appends: which attempt, which run."""
        out = {"id": (self.attempt or {}).get("id") or uuid.uuid4().hex[:16], "stage": self.stage}
        if self.run_attempt is not None:
            out["pipeline"] = self.run_attempt["id"]
        return out


class StageFailed(Exception):
    """A stage decided the pipeline must not go on past it (e.g. the gate failed).

    ``outputs`` are still recorded (the gate's decision and reasons are an artifact)."""

    def __init__(self, message: str, outputs: Outputs | None = None):
        super().__init__(message)
        self.outputs = outputs or {}


class GraphError(ValueError):
    """The stage graph is invalid (cycle, missing input, duplicate writer, unknown stage)."""


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of o2o's own program: every ``.py``, ``.yaml`` and ``.xml`` file of its packages, by
    relative path (the same for an editable install and a wheel of the same source)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for pkg in CODE_PACKAGES:
        folder = root / pkg
        for f in sorted(
            p
            for p in folder.rglob("*")
            if p.suffix in (".py", ".yaml", ".xml") and p.is_file() and "__pycache__" not in p.parts
        ):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


CODE_PACKAGES = ("core", "configs", "datasets", "deploy", "envs", "pipeline", "policies")


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
        grown = [a for a in s.appends if a not in s.reads]
        if grown:
            raise GraphError(f"stage {s.name!r} appends to {grown} without reading it (appends must be among reads)")
        missing = [a for a in s.reads if a not in writer]
        if missing:
            raise GraphError(
                f"stage {s.name!r} reads {missing}, which no selected stage writes "
                f"(writers: {sorted(writer.items())}); add the stage that writes it or give it"
            )
    deps = {s.name: {writer[a] for a in (*s.reads, *s.optional) if a in writer} - {"<given>"} for s in stages}
    done: list[str] = []
    pending = list(names)
    while pending:
        ready = [n for n in pending if deps[n] <= set(done)]
        if not ready:
            raise GraphError(
                f"the stages {pending} form a cycle through their artifacts: "
                + "; ".join(f"{n} reads from {sorted(deps[n] - set(done))}" for n in pending)
            )
        done.append(ready[0])
        pending.remove(ready[0])
    by_name = {s.name: s for s in stages}
    return [by_name[n] for n in done]


def downstream(stages: Sequence[Stage], roots: set[str]) -> set[str]:
    """The stages that (transitively) read an artifact written by one of ``roots``."""
    out: set[str] = set()
    frontier = set(roots)
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
    appends: list[str] = field(default_factory=list)  # artifacts the stage grew in place
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
        _write_json(self.dir / f"{fp}.json", record)

    # ------------------------------------------------------------------ attempts
    @property
    def attempts_dir(self) -> Path:
        return self.dir.parent / "attempts"

    def get_attempt(self, fp: str) -> dict | None:
        p = self.attempts_dir / f"{fp}.json"
        try:
            return json.loads(p.read_text()) if p.exists() else None
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record: start over

    def put_attempt(self, fp: str, record: dict) -> None:
        _write_json(self.attempts_dir / f"{fp}.json", record)

    def end_attempt(self, fp: str) -> None:
        (self.attempts_dir / f"{fp}.json").unlink(missing_ok=True)

    def open_attempts(self, stage: str | None = None) -> list[dict]:
        """Every attempt record still open (its stage was interrupted), oldest first."""
        if not self.attempts_dir.is_dir():
            return []
        out = []
        for p in sorted(self.attempts_dir.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if stage is None or rec.get("stage") == stage:
                out.append(rec)
        return sorted(out, key=lambda r: str(r.get("started", "")))


def _write_json(path: Path, data: Any) -> None:
    """Write ``path`` atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


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

    def artifact(self, name: str) -> Any:
        """Artifact ``name`` typed (:mod:`o2o.pipeline.artifacts`), or None when the run has none."""
        from o2o.pipeline.artifacts import typed

        return typed(name, self.artifacts.get(name))

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

    def __init__(self, stages: Sequence[Stage], given: Mapping[str, Any] | None = None, code: str | None = None):
        """``code``: what identifies the program in fingerprints (default :func:`code_digest`)."""
        self.given = dict(given or {})
        self.code = code_digest() if code is None else code
        self.stages = order_stages(stages, available=list(self.given))

    def run_fingerprint(self, configs: Mapping[str, Any]) -> str:
        """The key of a run's attempt: its stages and their configs (display keys aside)."""
        return "run-" + fingerprint(
            {
                "stages": [s.name for s in self.stages],
                "code": self.code,
                "configs": {s.name: _semantic(plain(configs.get(s.name))) for s in self.stages},
            }
        )

    def stage_fingerprint(self, stage: Stage, config: Any, inputs: Mapping[str, Any]) -> str:
        names = [a for a in (*stage.reads, *stage.optional) if a in inputs]
        return fingerprint(
            {
                "stage": stage.name,
                "config": _semantic(plain(config)),
                "code": self.code if stage.code_sensitive else None,
                "inputs": {a: artifact_fingerprint(inputs[a]) for a in names},
            }
        )

    def plan(self, configs: Mapping[str, Any], cache: StageCache) -> list[tuple[str, str]]:
        """``(stage, what happens)`` for each stage, as far as it can be known before running:
        a stage whose inputs come from a stage that will run can only be decided then."""
        artifacts, out, will_run = dict(self.given), [], set()
        earlier_run = cache.get_attempt(self.run_fingerprint(configs))
        run_attempt = None if earlier_run is None else {**earlier_run, "resumed": True}
        if earlier_run is not None:
            out.append(("(run)", f"resumes the run interrupted in {earlier_run.get('run_dir')}"))
        for s in self.stages:
            if (set(s.reads) | set(s.optional)) & {a for r in self.stages if r.name in will_run for a in r.writes}:
                out.append((s.name, "run if its inputs change (decided after upstream stages)"))
                will_run.add(s.name)
                continue
            inputs = {a: artifacts[a] for a in (*s.reads, *s.optional) if a in artifacts}
            fp = self.stage_fingerprint(s, configs.get(s.name), inputs)
            hit = cache.get(fp)
            if hit is not None and (s.valid is None or s.valid(hit["outputs"])):
                outputs = hit["outputs"]
                if s.refresh is not None:  # what a run would see: the dataset as it stands now (read only)
                    ctx = StageContext(
                        s.name,
                        configs.get(s.name),
                        inputs,
                        Path(hit.get("run_dir", ".")),
                        log=lambda m: None,
                        cache=cache,
                        run_attempt=run_attempt or {"id": None},
                        read_only=True,
                    )
                    outputs = _plain_outputs(s.refresh(ctx, outputs))
                artifacts.update(outputs)
                out.append((s.name, f"skip (unchanged, fingerprint {fp[:12]})"))
            else:
                attempt = cache.get_attempt(fp)
                why = (
                    f" (resumes the attempt interrupted in {attempt.get('run_dir')})"
                    if attempt is not None
                    else " (no finished record: new, changed or failed)"
                    if hit is None
                    else " (recorded outputs gone)"
                )
                out.append((s.name, "run" + why))
                will_run.add(s.name)
        return out

    def run(
        self,
        configs: Mapping[str, Any],
        cache: StageCache,
        run_dir: str | os.PathLike,
        log: Callable[[str], None] = print,
        force: Sequence[str] = (),
        manifest: Callable[[RunResult], None] | None = None,
    ) -> RunResult:
        """Run every stage in order (skipping unchanged ones); ``force`` reruns the named stages.

        ``manifest(result)`` is called after every stage, so an interrupted run leaves a
        manifest of what it finished.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        result = RunResult(run_dir, [], dict(self.given))
        blocked: set[str] = set()
        run_fp = self.run_fingerprint(configs)
        earlier_run = cache.get_attempt(run_fp)
        if earlier_run is not None and _running_elsewhere(earlier_run):
            raise RuntimeError(
                f"the same run (stages and configs) is in progress in process {earlier_run['pid']} on "
                f"this host since {earlier_run.get('started')} ({earlier_run.get('run_dir')}); wait for "
                "it to end or stop it — two copies would resume each other's stages"
            )
        run_attempt: dict[str, Any] = (
            {**earlier_run, "resumed": True}
            if earlier_run is not None
            else {
                "stage": "<run>",
                "fingerprint": run_fp,
                "id": uuid.uuid4().hex[:16],
                "run_dir": str(run_dir),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "resumed": False,
            }
        )
        run_attempt.update(pid=os.getpid(), host=socket.gethostname())
        if earlier_run is not None:
            log(f"resuming the run interrupted in {earlier_run.get('run_dir')} (same stages and configs)")
        cache.put_attempt(run_fp, run_attempt)
        for s in self.stages:
            if s.name in blocked:
                result.records.append(StageRecord(s.name, "blocked", message="an upstream stage stopped the run"))
                _call(manifest, result)
                continue
            inputs = {a: result.artifacts[a] for a in (*s.reads, *s.optional) if a in result.artifacts}
            fp = self.stage_fingerprint(s, configs.get(s.name), inputs)
            rec = StageRecord(
                s.name,
                "ran",
                fp,
                {a: artifact_fingerprint(v) for a, v in inputs.items()},
                appends=list(s.appends),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            ctx = StageContext(s.name, configs.get(s.name), inputs, run_dir, log, cache=cache, run_attempt=run_attempt)
            hit = None if s.name in force else cache.get(fp)
            t0 = time.perf_counter()
            if hit is not None and (s.valid is None or s.valid(hit["outputs"])):
                outputs = _plain_outputs(s.refresh(ctx, hit["outputs"]) if s.refresh else hit["outputs"])
                rec.status, rec.message = "skipped", f"unchanged since run {hit.get('run_dir', '?')}"
                log(f"[{s.name}] skipped: config and inputs unchanged (fingerprint {fp[:12]})")
            else:
                earlier = None if s.name in force else cache.get_attempt(fp)
                if earlier is not None:
                    ctx.attempt = {**earlier, "resumed": True}
                    log(f"[{s.name}] running: resuming the attempt interrupted in {earlier.get('run_dir')}")
                else:
                    ctx.attempt = {
                        "stage": s.name,
                        "fingerprint": fp,
                        "id": uuid.uuid4().hex[:16],
                        "run_dir": str(run_dir),
                        "started": rec.started,
                        "resumed": False,
                    }
                    log(f"[{s.name}] running")
                cache.put_attempt(fp, ctx.attempt)
                try:
                    outputs = _plain_outputs(s.run(ctx))
                except StageFailed as e:
                    cache.end_attempt(fp)  # a decision, not an interruption: nothing to resume
                    e.outputs = _plain_outputs(e.outputs)
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
                    raise RuntimeError(
                        f"stage {s.name!r} did not produce {missing} (it declares writes={list(s.writes)})"
                    )
                cache.put(
                    fp,
                    {
                        "stage": s.name,
                        "fingerprint": fp,
                        "outputs": outputs,
                        "run_dir": str(run_dir),
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                cache.end_attempt(fp)
                if s.finished is not None:
                    s.finished(ctx, outputs)
            rec.outputs, rec.seconds = outputs, time.perf_counter() - t0
            result.artifacts.update(outputs)
            result.records.append(rec)
            _call(manifest, result)
        cache.end_attempt(run_fp)  # the run ended (whatever its stages decided): nothing to resume
        for adopted in run_attempt.get("adopted") or []:  # interrupted runs this one took over (collect's refresh)
            cache.end_attempt(adopted)
        return result


def _plain_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's outputs as the runner records them: typed artifacts as their dicts."""
    return {k: (v.to_dict() if hasattr(v, "to_dict") and not isinstance(v, Mapping) else v) for k, v in outputs.items()}


def _running_elsewhere(record: Mapping[str, Any]) -> bool:
    """Whether the attempt's process is alive on this host and is not this one."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or record.get("host") != socket.gethostname():
        return False
    if not alive(pid):
        return False
    try:  # a reused pid: another program now
        return b"o2o" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: assume it is the run


def _semantic(config: Any, path: str = "") -> Any:
    """``config`` without what does not change a stage's result (:data:`DISPLAY_KEYS` at any depth,
    :data:`NON_SEMANTIC_PATHS`)."""
    if isinstance(config, Mapping):
        out = {}
        for k, v in config.items():
            here = f"{path}.{k}" if path else str(k)
            if k not in DISPLAY_KEYS and here not in NON_SEMANTIC_PATHS:
                out[k] = _semantic(v, here)
        return out
    if isinstance(config, list):
        return [_semantic(v, path) for v in config]
    return config


def _call(fn, *args) -> None:
    if fn is not None:
        fn(*args)
