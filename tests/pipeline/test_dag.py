"""The stage DAG runner: order from artifact names, invalid graphs refused before anything
runs, skip when unchanged, rerun downstream when the data grew, resume after a kill,
blocked stages after a failed gate, the manifest.

The stages here are small real functions that read and write files, so the runner is
exercised exactly as the o2o stages use it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from o2o.pipeline.dag import GraphError, Pipeline, Stage, StageCache, StageFailed, artifact_fingerprint, order_stages


def noop(ctx):
    return {}


def S(name, reads=(), writes=(), run=noop, **kw):
    return Stage(name, tuple(reads), tuple(writes), run, **kw)


def test_order_is_derived_from_artifact_names_whatever_the_listed_order():
    stages = [
        S("export", ["policy"], ["exported"]),
        S("train", ["data"], ["ckpt"]),
        S("collect", [], ["data"]),
        S("gate", ["ckpt", "data"], ["policy"]),
        S("report", ["exported", "data"], ["report"]),
    ]
    assert [s.name for s in order_stages(stages)] == ["collect", "train", "gate", "export", "report"]


@pytest.mark.parametrize(
    "stages, message",
    [
        ([S("a", ["x"], ["y"]), S("b", ["y"], ["x"])], r"stages \['a', 'b'\] form a cycle"),
        ([S("train", ["data"], ["ckpt"])], r"stage 'train' reads \['data'\], which no selected stage writes"),
        ([S("a", [], ["x"]), S("b", [], ["x"])], r"artifact 'x' is written by both 'a' and 'b'"),
        ([S("a", [], ["x"]), S("a", [], ["y"])], r"stage names used twice: \['a'\]"),
    ],
)
def test_invalid_graphs_are_refused_before_anything_runs(stages, message, tmp_path):
    ran = []
    stages = [Stage(s.name, s.reads, s.writes, lambda ctx: ran.append(ctx.stage) or {}) for s in stages]
    with pytest.raises(GraphError, match=message):
        Pipeline(stages).run({}, StageCache(tmp_path / "state"), tmp_path / "run")
    assert ran == []


class Counter:
    """Stage functions over a real 'dataset' file: collect appends lines, train counts them."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []
        self.data = root / "data.txt"

    def collect(self, ctx):
        self.calls.append("collect")
        with open(self.data, "a") as f:
            f.writelines(f"episode {i}\n" for i in range(ctx.config["episodes"]))
        return {"data": self.version()}

    def version(self):
        n = len(self.data.read_text().splitlines())
        return {"path": str(self.data), "episodes": n, "fingerprint": f"v{n}"}

    def train(self, ctx):
        self.calls.append("train")
        out = ctx.out_dir / "model.json"
        out.write_text(json.dumps({"trained_on": ctx.inputs["data"]["episodes"], "lr": ctx.config["lr"]}))
        return {"ckpt": {"path": str(out), "trained_on": ctx.inputs["data"]["episodes"]}}

    def evaluate(self, ctx):
        self.calls.append("evaluate")
        return {"evaluation": {"score": ctx.inputs["ckpt"]["trained_on"] * 10}}

    def pipeline(self):
        return Pipeline(
            [
                Stage("collect", (), ("data",), self.collect, refresh=lambda ctx, old: {"data": self.version()}),
                Stage("train", ("data",), ("ckpt",), self.train, valid=lambda out: Path(out["ckpt"]["path"]).exists()),
                Stage("evaluate", ("ckpt",), ("evaluation",), self.evaluate),
            ]
        )


def test_unchanged_stages_are_skipped_and_new_data_reruns_everything_downstream(tmp_path):
    c = Counter(tmp_path)
    cache, cfg = StageCache(tmp_path / "state"), {"collect": {"episodes": 3}, "train": {"lr": 0.1}}
    r1 = c.pipeline().run(cfg, cache, tmp_path / "run1", log=lambda m: None)
    assert c.calls == ["collect", "train", "evaluate"] and r1.ok
    assert r1.artifacts["evaluation"] == {"score": 30}

    c.calls.clear()
    r2 = c.pipeline().run(cfg, cache, tmp_path / "run2", log=lambda m: None)
    assert c.calls == [] and [r.status for r in r2.records] == ["skipped"] * 3
    assert r2.artifacts["evaluation"] == {"score": 30}

    # New data arrives from elsewhere (another tool appended): collect is unchanged, but its
    # refreshed output is the grown dataset, so training and evaluation rerun.
    with open(c.data, "a") as f:
        f.write("teleop episode\n")
    r3 = c.pipeline().run(cfg, cache, tmp_path / "run3", log=lambda m: None)
    assert c.calls == ["train", "evaluate"]
    assert [r.status for r in r3.records] == ["skipped", "ran", "ran"]
    assert r3.artifacts["evaluation"] == {"score": 40}

    # A config change reruns that stage and what depends on it, nothing upstream.
    c.calls.clear()
    c.pipeline().run({**cfg, "train": {"lr": 0.2}}, cache, tmp_path / "run4", log=lambda m: None)
    assert c.calls == ["train", "evaluate"]

    # Outputs that disappeared are not trusted: the stage reruns.
    c.calls.clear()
    Path(r3.artifacts["ckpt"]["path"]).unlink()
    c.pipeline().run(cfg, cache, tmp_path / "run5", log=lambda m: None)
    assert c.calls == ["train", "evaluate"]


def test_plan_says_what_would_run(tmp_path):
    c = Counter(tmp_path)
    cache, cfg = StageCache(tmp_path / "state"), {"collect": {"episodes": 2}, "train": {"lr": 0.1}}
    assert [w.split(" ")[0] for _, w in c.pipeline().plan(cfg, cache)] == ["run", "run", "run"]
    c.pipeline().run(cfg, cache, tmp_path / "run1", log=lambda m: None)
    plan = c.pipeline().plan(cfg, cache)
    assert [w.split(" ")[0] for _, w in plan] == ["skip", "skip", "skip"]
    assert c.calls == ["collect", "train", "evaluate"]  # planning ran nothing


def test_failed_stage_blocks_its_downstream_only_and_records_its_outputs(tmp_path):
    def gate(ctx):
        raise StageFailed("success 0.20 < 0.50 by 0.30", outputs={"decision": {"passed": False}})

    ran = []
    stages = [
        S("train", [], ["ckpt"], lambda ctx: {"ckpt": 1}),
        S("gate", ["ckpt"], ["decision"], gate),
        S("finetune", ["decision", "ckpt"], ["tuned"], lambda ctx: ran.append("finetune") or {"tuned": 1}),
        S("export", ["tuned"], ["exported"], lambda ctx: ran.append("export") or {"exported": 1}),
        S("report", ["ckpt"], ["report"], lambda ctx: ran.append("report") or {"report": 1}),
    ]
    r = Pipeline(stages).run({}, StageCache(tmp_path / "s"), tmp_path / "run", log=lambda m: None)
    assert not r.ok
    assert {x.name: x.status for x in r.records} == {
        "train": "ran",
        "gate": "failed",
        "finetune": "blocked",
        "export": "blocked",
        "report": "ran",
    }
    assert ran == ["report"]
    assert r.record("gate").message == "success 0.20 < 0.50 by 0.30"
    assert r.artifacts["decision"] == {"passed": False}


def test_manifest_records_every_stage(tmp_path):
    c = Counter(tmp_path)
    cfg = {"collect": {"episodes": 2}, "train": {"lr": 0.1}}
    path = tmp_path / "manifest.json"
    c.pipeline().run(
        cfg,
        StageCache(tmp_path / "state"),
        tmp_path / "run",
        log=lambda m: None,
        manifest=lambda res: res.write(path, o2o_version="test"),
    )
    m = json.loads(path.read_text())
    assert m["ok"] and m["o2o_version"] == "test"
    train = m["stages"][1]
    assert train["name"] == "train" and train["status"] == "ran"
    assert train["inputs"] == {"data": "v2"} and train["outputs"]["ckpt"]["trained_on"] == 2
    assert len(train["fingerprint"]) == 64 and train["seconds"] >= 0 and train["started"]
    assert artifact_fingerprint({"fingerprint": "abc"}) == "abc"


RESUME = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from o2o.pipeline.dag import Pipeline, Stage, StageCache
    root = Path(sys.argv[1])
    def step(name):
        def run(ctx):
            with open(root / "calls.txt", "a") as f:
                f.write(name + "\\n")
            if name == "b" and not (root / "let_b_finish").exists():
                (root / "b_started").write_text("")
                time.sleep(60)  # killed here
            return {name + "_out": name}
        return run
    stages = [Stage("a", (), ("a_out",), step("a")), Stage("b", ("a_out",), ("b_out",), step("b")),
              Stage("c", ("b_out",), ("c_out",), step("c"))]
    r = Pipeline(stages).run({}, StageCache(root / "state"), root / "run", log=lambda m: None,
                             manifest=lambda res: res.write(root / "manifest.json"))
    print([x.status for x in r.records])
""")


def test_a_killed_run_resumes_after_its_last_finished_stage(tmp_path):
    script = tmp_path / "pipe.py"
    script.write_text(RESUME)
    p = subprocess.Popen([sys.executable, str(script), str(tmp_path)], start_new_session=True)
    deadline = time.time() + 60
    while not (tmp_path / "b_started").exists():
        assert time.time() < deadline and p.poll() is None, "stage b never started"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"][0]["status"] == "ran"
    (tmp_path / "let_b_finish").write_text("")
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['skipped', 'ran', 'ran']"
    assert (tmp_path / "calls.txt").read_text().split() == ["a", "b", "b", "c"]


def test_optional_inputs_order_the_stage_but_never_block_it(tmp_path):
    def gate(ctx):
        raise StageFailed("diverged", outputs={"decision": {"passed": False}})

    seen = {}
    stages = [
        S(
            "report",
            ["ckpt"],
            ["report"],
            lambda ctx: seen.update(ctx.inputs) or {"report": 1},
            optional=("decision", "tuned"),
        ),
        S("train", [], ["ckpt"], lambda ctx: {"ckpt": 1}),
        S("gate", ["ckpt"], ["decision"], gate),
        S("finetune", ["decision"], ["tuned"], lambda ctx: {"tuned": 1}),
    ]
    p = Pipeline(stages)
    assert [s.name for s in p.stages] == ["train", "gate", "finetune", "report"]
    r = p.run({}, StageCache(tmp_path / "s"), tmp_path / "run", log=lambda m: None)
    assert {x.name: x.status for x in r.records} == {
        "train": "ran",
        "gate": "failed",
        "finetune": "blocked",
        "report": "ran",
    }
    assert seen == {"ckpt": 1, "decision": {"passed": False}}  # the failed gate's decision, no finetune


def test_a_changed_program_reruns_instead_of_reusing_old_outputs(tmp_path):
    """The fingerprint holds the program (o2o's code digest): old outputs are not reused by new code."""
    from o2o.pipeline.dag import code_digest

    calls = []

    def a(ctx):
        calls.append("a")
        return {"a_out": {"v": 1}}

    stages = [Stage("a", (), ("a_out",), a)]
    cache = StageCache(tmp_path / "state")
    for code in ("v1", "v1", "v2"):
        Pipeline(stages, code=code).run({}, cache, tmp_path / "run", log=lambda m: None)
    assert calls == ["a", "a"]  # skipped once under the same program, rerun under another
    # ... unless the stage's outputs do not depend on the program (collect: data, appended once)
    calls.clear()
    stages = [Stage("a", (), ("a_out",), a, code_sensitive=False)]
    cache = StageCache(tmp_path / "state2")
    for code in ("v1", "v2"):
        Pipeline(stages, code=code).run({}, cache, tmp_path / "run2", log=lambda m: None)
    assert calls == ["a"]
    assert len(code_digest()) == 64 and code_digest() == code_digest()
