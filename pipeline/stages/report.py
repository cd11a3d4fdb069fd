"""The report stage: one Markdown page with PNG plots, for a person rather than a log reader.

Sections: the dataset (composition and growth per source, returns per source), offline
training (losses, periodic evaluation, the value diagnostic "estimated Q vs achieved
return"), the evaluation (simulation, OPE next to it), the gate decision with every
criterion and why, online finetuning (the offline -> online learning curve against the offline
policy's and the data's levels, the finetuning curve in detail, any rollback), the exported
policy (files, parity) and the run among the earlier runs on the same state (this offline
policy beside theirs, trained on smaller versions of the growing dataset) — each section says
so when its stage did not run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from o2o.datasets import EpisodeStore
from o2o.datasets.reading import parse_version
from o2o.pipeline.artifacts import (
    CheckpointArtifact,
    DatasetArtifact,
    EvaluationArtifact,
    ExportedArtifact,
    FinetuneArtifact,
    GateArtifact,
    PolicyArtifact,
    ReportArtifact,
)
from o2o.pipeline.dag import Stage


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def dataset_section(out: Path, data: DatasetArtifact) -> list[str]:
    """The dataset as it stands now (online episodes appended by finetuning included), with the
    version the offline policy was trained on marked: growth and returns per source, and a
    table per source and behaviour policy."""
    plt = _plt()
    with EpisodeStore.open(data.path, mode="r") as store:
        t = store.episodes_table()
    trained = data.episodes
    sources = sorted(set(t["source"]))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    for src in sources:  # growth: cumulative episodes per source over the dataset's history
        m = (t["source"] == src).astype(int)
        ax[0].plot(np.arange(1, len(m) + 1), np.cumsum(m), label=str(src))
    if len(t["index"]) > trained:
        ax[0].axvline(trained, color="gray", ls="--", lw=1, label=f"trained on ({trained})")
    ax[0].set(xlabel="episodes in the dataset", ylabel="episodes of this source", title="growth per source")
    ax[0].legend(fontsize=8)
    ax[1].boxplot([t["returns"][t["source"] == s] for s in sources], tick_labels=[str(s) for s in sources])
    ax[1].set(ylabel="episode return", title="returns per source")
    fig.tight_layout()
    fig.savefig(out / "dataset.png", dpi=90)
    plt.close(fig)
    rows = ["| source | policy | episodes | steps | return mean | success |", "|---|---|---:|---:|---:|---:|"]
    for s, pid in sorted(set(zip(t["source"], t["policy_id"])), key=lambda k: (str(k[0]), str(k[1]))):
        m = (t["source"] == s) & (t["policy_id"] == pid)
        succ = np.asarray(t["success"][m], float)
        rows.append(
            f"| {s} | {pid} | {int(m.sum())} | {int(t['length'][m].sum())} | {np.mean(t['returns'][m]):.1f} | "
            f"{_fmt(float(np.nanmean(succ)) if np.isfinite(succ).any() else None, '.2f')} |"
        )
    now = len(t["index"])
    grown = (
        f" It now holds {now} episodes ({int(t['length'].sum())} steps): {now - trained} appended since."
        if now > trained
        else ""
    )
    return [
        f"## Dataset\n\n`{data.path}`: the offline policy was trained on version "
        f"{trained}@{data.fingerprint[:12]} ({data.transitions} transitions).{grown}\n",
        *rows,
        "",
        "![dataset](dataset.png)",
        "",
    ]


LOG_SPAN = 30.0  # a positive loss whose largest value is this many times its smallest gets a log axis
MIN_RELATIVE_SPAN = 0.1  # the finetuning curve's axis covers at least +-10% of the pre-finetune level


def _legend_below(ax, handles: list | None = None, labels: list | None = None):
    """The legend under the axes, outside them: it covers no curve."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    return ax.legend(
        handles,
        labels,
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=min(3, max(1, len(handles))),
        frameon=False,
    )


def _loss_axis(ax, values: list[float]) -> str:
    """A readable y-axis for one loss: log with labelled 1-2-5 ticks when the loss is positive and spans more
    than LOG_SPAN x (a fall from its first updates), else linear. Returns the scale's name."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) and v.min() > 0 and v.max() / v.min() > LOG_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        return "log"
    return "linear"


def training_figure(metrics: list[dict], hist: list[dict]):
    """Offline training: one small panel per loss (its own axis: linear, or log when it falls by more than
    LOG_SPAN x), and the periodic evaluation under them. ``metrics``: the rows of Lightning's metrics.csv."""
    plt = _plt()
    losses = {}
    for key in sorted({k for r in metrics for k in r if k.startswith("train/") and k.endswith("_loss")}):
        pts = [(int(r["step"]), float(r[key])) for r in metrics if r.get(key) not in (None, "")]
        if pts:
            losses[key.removeprefix("train/")] = pts
    cols = max(1, len(losses))
    fig = plt.figure(figsize=(max(10.0, 3.2 * cols), 7.2))
    grid = fig.add_gridspec(2, cols, height_ratios=(1, 1.25), hspace=0.55, wspace=0.35)
    scales = []
    for i, (name, pts) in enumerate(losses.items()):
        ax = fig.add_subplot(grid[0, i])
        steps, values = zip(*pts)
        ax.plot(steps, values, lw=1)
        scale = _loss_axis(ax, values)
        scales.append(scale)
        ax.set_title(name + (" (log axis)" if scale == "log" else ""), fontsize=9)
        ax.set_xlabel("update", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="major")
    ev = fig.add_subplot(grid[1, :])
    if hist:
        steps = [h["step"] for h in hist]
        ev.plot(steps, [h["return_mean"] for h in hist], "o-", label="return (simulated)")
        if all("q_start_mean" in h for h in hist):
            ev.plot(steps, [h["q_start_mean"] for h in hist], "s--", label="Q(start), estimated")
            ev.plot(steps, [h["mc_discounted_return_mean"] for h in hist], "^:", label="discounted return, achieved")
        _legend_below(ev)
    ev.set(
        xlabel="update",
        ylabel="env reward units",
        title="periodic evaluation" if hist else "periodic evaluation (none: eval.enabled=false)",
    )
    how = (
        f"each on its own axis; log where a loss fell by more than {LOG_SPAN:g}x"
        if "log" in scales
        else "each on its own linear axis"
    )
    fig.suptitle(f"training losses ({how})" if losses else "training losses (none logged)", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.2)
    return fig


def training_section(out: Path, ckpt: CheckpointArtifact) -> list[str]:
    lines = [
        f"## Offline training\n\n{ckpt.algo}, {ckpt.updates} updates; checkpoint `{ckpt.path}` "
        f"chosen by {ckpt.selection}.\n"
    ]
    metrics = Path(ckpt.summary).parent / "csv" / "metrics.csv" if ckpt.summary else None
    rows = list(csv.DictReader(metrics.read_text().splitlines())) if metrics and metrics.exists() else []
    fig = training_figure(rows, ckpt.evaluations or [])
    fig.savefig(out / "training.png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return [
        *lines,
        "![training](training.png)",
        "",
        "Each loss has its own axis (log where it fell by more than "
        f"{LOG_SPAN:g}x); under them, the critic's Q(start) next to the discounted return the policy achieved.",
        "",
    ]


def evaluation_section(ev: EvaluationArtifact | None) -> list[str]:
    if ev is None:
        return ["## Evaluation\n\nThe evaluate stage did not run.\n"]
    s, ope, d = ev.sim or {}, ev.ope or {}, ev.data
    rows = [
        "| | return | success | discounted return | Q(start) estimated | FQE |",
        "|---|---:|---:|---:|---:|---:|",
        f"| dataset behaviour | {d.return_mean:.1f} | {_fmt(d.success_rate, '.2f')} | - | - | - |",
        f"| offline policy | {_fmt(s.get('return_mean'), '.1f')} | {_fmt(s.get('success_rate'), '.2f')} | "
        f"{_fmt(s.get('mc_discounted_return_mean'), '.1f')} | {_fmt(s.get('q_start_mean'), '.1f')} | "
        f"{_fmt(ope.get('ope/fqe_value'), '.1f')} |",
    ]
    fqe = (
        "FQE the off-policy estimate from the dataset alone"
        if ope
        else "no off-policy estimate was asked for (`evaluation.ope=true` adds FQE, IS and DR next to simulation)"
    )
    return [
        f"## Evaluation\n\n{_fmt(s.get('episodes'), '.0f')} simulated episodes on seeds not used to choose the "
        f"checkpoint; Q(start) is the critic's own estimate on the start states, {fqe}.\n",
        *rows,
        "",
    ]


def gate_section(gate: GateArtifact | None) -> list[str]:
    """Every criterion of the gate with its value, threshold, verdict and why (criteria only reported, not
    judged, say so)."""
    if gate is None:
        return ["## Gate\n\nThe gate did not run.\n"]
    rows = ["| criterion | value | threshold | passed | margin | why |", "|---|---:|---:|:-:|---:|---|"]
    for c in gate.criteria:
        verdict = "reported" if c.get("judged", True) is False else "yes" if c["passed"] else "**no**"
        why = str(c.get("detail", "")).replace("|", "/")
        rows.append(
            f"| {c['name']} | {_fmt(c['value'])} | {c['op']} {_fmt(c['threshold'])} | "
            f"{verdict} | {_fmt(c['margin'])} | {why} |"
        )
    verdict = "**passed**" if gate.passed else "**failed**: the online stages did not run"
    return [f"## Gate\n\nThe gate {verdict}.\n", *rows, ""]


def finetune_figure(ft: dict):
    """The finetuning curve (periodic evaluations by env step) with the pre-finetune level, the success rate
    on its own axis, and any rollback marked. The metric's axis spans at least +-MIN_RELATIVE_SPAN of the
    pre-finetune level, so a change of a fraction of a percent does not look steep; the legend sits
    under the axes."""
    plt = _plt()
    curve, rb = ft.get("curve") or [], ft.get("rollback")
    metric = (rb or {}).get("metric", "return_mean")
    fig, ax = plt.subplots(figsize=(7, 4.4))
    handles: list = []
    values = [float(c[metric]) for c in curve if c.get(metric) is not None]
    if curve:
        steps = [c["step"] for c in curve]
        handles += ax.plot(steps, [c.get(metric) for c in curve], "o-", label=f"{metric} (periodic evaluation)")
        handles.append(ax.axhline(curve[0][metric], color="gray", ls="--", lw=1, label="pre-finetune level"))
        if any("success_rate" in c for c in curve) and metric != "success_rate":
            ax2 = ax.twinx()
            handles += ax2.plot(
                steps,
                [c.get("success_rate") for c in curve],
                "s:",
                color="tab:green",
                label="success rate (right axis)",
            )
            ax2.set(ylabel="success rate", ylim=(-0.05, 1.05))
            ax.set_zorder(ax2.get_zorder() + 1)  # the metric and the rollback marks above the success curve
            ax.patch.set_visible(False)
    if rb:
        handles.append(ax.axhline(rb["threshold"], color="tab:red", ls=":", lw=1, label="rollback threshold"))
        ax.axvline(rb["step"], color="tab:red", lw=1.5)
        handles += ax.plot(
            [rb["step"]], [rb["value"]], "X", color="tab:red", ms=11, label=f"rollback (step {rb['step']})"
        )
        handles += ax.plot(
            [rb["restored_step"]],
            [rb["restored_value"]],
            "*",
            color="tab:orange",
            ms=14,
            label=f"restored weights (step {rb['restored_step']})",
        )
        values += [float(rb["threshold"]), float(rb["value"])]
    if values:
        level = float(curve[0][metric]) if curve else values[0]
        half = MIN_RELATIVE_SPAN * abs(level) or MIN_RELATIVE_SPAN * max(abs(v) for v in values) or 1.0
        lo, hi = min(min(values), level - half), max(max(values), level + half)
        pad = 0.05 * (hi - lo)
        if metric == "success_rate":
            lo, hi, pad = min(lo, 0.0), max(hi, 1.0), 0.05
        ax.set_ylim(lo - pad, hi + pad)
    ax.set(xlabel="online env steps", ylabel=metric)
    ax.set_title(
        "online finetuning"
        + (" — ROLLED BACK" if rb else "")
        + f"\n({metric} axis spans at least ±{MIN_RELATIVE_SPAN:.0%} of the pre-finetune level)",
        fontsize=10,
    )
    if handles:
        _legend_below(ax, handles, [h.get_label() for h in handles])
    fig.tight_layout()
    return fig


def learning_levels(ft: FinetuneArtifact, ev: EvaluationArtifact | None) -> dict[str, dict[str, float | None]]:
    """The numbers the learning curve draws, per metric (``return_mean``, ``success_rate``): the offline
    policy's level (the evaluate stage's simulation), the data's level (its behaviour over the version
    trained on), the finetuned policy's final evaluation (on the evaluate stage's seeds) and the online
    env steps it ran. A level nobody measured is None."""
    sim = (ev.sim if ev is not None else None) or {}
    data = ev.data if ev is not None else None
    final = ft.evaluation or {}
    out: dict[str, dict[str, float | None]] = {}
    for m in ("return_mean", "success_rate"):
        out[m] = {
            "offline": sim.get(m),
            "data": getattr(data, m, None) if data is not None else None,
            "final": final.get(m),
        }
    out["steps"] = {"online": float(ft.steps), "offline_episodes": sim.get("episodes")}
    return out


def learning_curve_figure(ft: FinetuneArtifact, ev: EvaluationArtifact | None):
    """Offline -> online: return (and success, when the env reports it) of the periodic evaluations against
    online env steps, the offline policy's level and the data's level as horizontal lines, the finetuned
    policy's final evaluation as a marker at the last step, a rollback as a vertical line. One panel per
    metric; the legend under the panels."""
    plt = _plt()
    levels = learning_levels(ft, ev)
    curve = ft.curve or []
    metrics = ["return_mean"]
    if any(c.get("success_rate") is not None for c in curve) or levels["success_rate"]["offline"] is not None:
        metrics.append("success_rate")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        pts = [(c["step"], c[m]) for c in curve if c.get(m) is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", color="tab:blue", label="online: periodic evaluation")
        lv = levels[m]
        if lv["offline"] is not None:
            ax.axhline(
                lv["offline"], color="tab:orange", ls="--", lw=1.2, label=f"offline policy ({lv['offline']:.3g})"
            )
        if lv["data"] is not None:
            ax.axhline(lv["data"], color="gray", ls=":", lw=1.2, label=f"behaviour data ({lv['data']:.3g})")
        if lv["final"] is not None:
            ax.plot(
                [ft.steps], [lv["final"]], "D", color="tab:green", ms=8, label=f"finetuned, final ({lv['final']:.3g})"
            )
        if ft.rollback:
            ax.axvline(ft.rollback["step"], color="tab:red", lw=1, label=f"rollback (step {ft.rollback['step']})")
        if m == "success_rate":
            ax.set_ylim(-0.05, 1.05)
        ax.set(xlabel="online env steps", ylabel=m.replace("_", " "), title=m.replace("_", " "))
        ax.grid(alpha=0.3)
        _legend_below(ax)
    fig.suptitle("offline -> online learning curve", fontsize=11)
    fig.tight_layout()
    return fig


def learning_curve_caption(ft: FinetuneArtifact, ev: EvaluationArtifact | None) -> str:
    """One sentence of the numbers the learning curve shows."""
    lv = learning_levels(ft, ev)
    parts = []
    for m, spec, label in (("return_mean", ".1f", "return"), ("success_rate", ".2f", "success")):
        v = lv[m]
        if v["offline"] is None and v["final"] is None:
            continue
        parts.append(
            f"{label} {_fmt(v['offline'], spec)} offline -> {_fmt(v['final'], spec)} finetuned "
            f"(behaviour data {_fmt(v['data'], spec)})"
        )
    return (
        f"Offline -> online over {ft.steps} online env steps: " + "; ".join(parts) + ". Lines: the offline policy "
        "and the final evaluation on the evaluate stage's seeds, the data's mean over the version trained on; "
        "the curve: finetuning's periodic evaluations."
    )


def finetune_section(out: Path, ft: FinetuneArtifact | None, ev: EvaluationArtifact | None = None) -> list[str]:
    """The offline -> online learning curve (:func:`learning_curve_figure`) with a caption of its numbers, the
    finetuning curve in detail (:func:`finetune_figure`); the final evaluation next to the starting level."""
    if ft is None:
        return ["## Online finetuning\n\nThis stage did not run in this pipeline.\n"]
    fig = learning_curve_figure(ft, ev)
    fig.savefig(out / "learning_curve.png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    fig = finetune_figure({"curve": ft.curve, "rollback": ft.rollback})
    fig.savefig(out / "finetune.png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    ev_ft, pre, online = ft.evaluation or {}, ft.pre_finetune or {}, ft.online or {}
    rows = [
        "| | return | success |",
        "|---|---:|---:|",
        f"| before finetuning (periodic seeds) | {_fmt(pre.get('return_mean'), '.1f')} | "
        f"{_fmt(pre.get('success_rate'), '.2f')} |",
        f"| online episodes (exploring) | {_fmt(online.get('return_mean'), '.1f')} | "
        f"{_fmt(online.get('success_rate'), '.2f')} |",
        f"| finetuned policy (evaluation seeds) | {_fmt(ev_ft.get('return_mean'), '.1f')} | "
        f"{_fmt(ev_ft.get('success_rate'), '.2f')} |",
    ]
    return [
        f"## Online finetuning\n\n{ft.summary}\n",
        "![offline -> online learning curve](learning_curve.png)",
        "",
        learning_curve_caption(ft, ev),
        "",
        *rows,
        "",
        "![finetuning](finetune.png)",
        "",
    ]


def export_section(ex: ExportedArtifact | None) -> list[str]:
    """Where the exported policy is, and how closely each backend matches the trained policy:
    the largest action difference on recorded observations, and the closed loop in simulation."""
    if ex is None:
        return ["## Export\n\nThis stage did not run in this pipeline.\n"]
    lines = [
        f"## Export\n\nThe {ex.origin} policy, in `{ex.dir}` (manifest `{ex.manifest}`).\n",
        "| file | bytes |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {_fmt((info or {}).get('bytes'), 'd')} |" for name, info in (ex.files or {}).items()]
    lines += ["", "| backend | largest action difference vs torch |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v, '.1e')} |" for k, v in (ex.parity or {}).items()]
    cl = ex.closed_loop or {}
    if cl.get("runtime"):
        lines += ["", "| closed loop in simulation | return | success |", "|---|---:|---:|"]
        for name, label in (("trained", "trained policy (torch)"), ("runtime", "exported policy (o2o runtime)")):
            r = cl.get(name) or {}
            lines.append(f"| {label} | {_fmt(r.get('return_mean'), '.1f')} | {_fmt(r.get('success_rate'), '.2f')} |")
    return [*lines, ""]


def _episodes(selector: str | None) -> str:
    version = parse_version(selector)
    return "?" if version is None else str(version["episodes"])


def runs_section(
    state_dir: str | None,
    ckpt: CheckpointArtifact | None,
    ev: EvaluationArtifact | None,
    ft: FinetuneArtifact | None,
    policy: PolicyArtifact | None,
    evaluation_seed: int | None,
) -> tuple[list[str], str | None]:
    """This run's offline policy beside the earlier runs' of the same algorithm on the same evaluation seeds
    (``state_dir``'s lineage): did retraining on the grown dataset pay? Also returns a one-line summary."""
    from o2o.pipeline import lineage

    head = "## Across runs\n"
    if ckpt is None or state_dir is None:
        return [head, "No policy was trained in this run.\n"], None
    current = lineage.entry(ckpt, ev, ft, policy, evaluation_seed=evaluation_seed)
    earlier = lineage.comparable(lineage.read(state_dir), current)
    if not earlier or not current.get("offline"):
        return [
            head,
            f"No earlier run of {ckpt.algo} on this state (`{state_dir}`) was evaluated on the same seeds: the "
            "next `o2o run` retrains on the dataset as this run leaves it (with the episodes finetuning appended) "
            "and sets its offline policy beside this one here.\n",
        ], None
    rows = [
        "| run | trained on (episodes) | offline success | offline return | finetuned success | finetuned return "
        "| promoted |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    shown = earlier[-5:]
    for i, e in enumerate([*shown, current]):
        off, fin = e.get("offline") or {}, e.get("finetuned") or {}
        name = "this run" if e is current else (e.get("time") or f"earlier {i + 1}")
        rows.append(
            f"| {name} | {_episodes(e.get('dataset_version'))} | {_fmt(off.get('success_rate'), '.2f')} | "
            f"{_fmt(off.get('return_mean'), '.1f')} | {_fmt(fin.get('success_rate'), '.2f')} | "
            f"{_fmt(fin.get('return_mean'), '.1f')} | {e.get('promoted') or '-'} |"
        )
    prev, now = earlier[-1]["offline"], current["offline"]
    line = (
        f"offline policy on {_episodes(current['dataset_version'])} episodes vs the previous run's on "
        f"{_episodes(earlier[-1].get('dataset_version'))}: success {_fmt(prev.get('success_rate'), '.2f')} -> "
        f"{_fmt(now.get('success_rate'), '.2f')}, return {_fmt(prev.get('return_mean'), '.1f')} -> "
        f"{_fmt(now.get('return_mean'), '.1f')} (the same {_fmt(now.get('episodes'), '.0f')} evaluation seeds)"
    )
    text = (
        f"The {ckpt.algo} policies trained by the runs on this state (`{state_dir}`), each evaluated on the same "
        f"{_fmt(now.get('episodes'), '.0f')} seeds: the dataset grows by what each run's finetuning appended, and "
        "each run retrains on it. One run's figures move with its seeds; `bench/bench_o2o.py --rounds 2` "
        "measures the difference over seeds.\n"
    )
    return [head, text, *rows, "", f"This run's {line}.", ""], line


def run_stage(ctx) -> dict:
    out = ctx.out_dir
    lines = [f"# o2o run report\n\nRun folder `{ctx.run_dir}`.\n"]
    lines += dataset_section(out, ctx.artifact("dataset"))
    if ctx.artifact("checkpoint") is not None:
        lines += training_section(out, ctx.artifact("checkpoint"))
    lines += evaluation_section(ctx.artifact("evaluation"))
    lines += gate_section(ctx.artifact("gate"))
    lines += finetune_section(out, ctx.artifact("finetune"), ctx.artifact("evaluation"))
    lines += export_section(ctx.artifact("exported"))
    evaluation = ctx.config.get("evaluation") or {}
    runs, line = runs_section(
        ctx.config.get("state_dir"),
        ctx.artifact("checkpoint"),
        ctx.artifact("evaluation"),
        ctx.artifact("finetune"),
        ctx.artifact("policy"),
        None if evaluation.get("seed") is None else int(evaluation["seed"]),
    )
    lines += runs
    if line:
        ctx.log(f"  across runs: {line}")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    ctx.log(f"  report: {path}")
    return {"report": ReportArtifact(path=str(path), plots=sorted(p.name for p in out.glob("*.png")))}


STAGE = Stage(
    "report",
    reads=("dataset",),
    writes=("report",),
    run=run_stage,
    optional=("checkpoint", "evaluation", "gate", "finetune", "policy", "exported"),
    doc="a Markdown page with plots: data, training, evaluation, gate, finetuning, export, across runs",
)
CONFIG_KEYS = ("report", "state_dir", "evaluation")
