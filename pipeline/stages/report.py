"""The report stage: one Markdown page with PNG plots, for a person rather than a log reader.

Sections: the dataset (composition and growth per source, returns per source), offline
training (losses, periodic evaluation, the value diagnostic "estimated Q vs achieved
return"), the evaluation (simulation, OPE next to it), the gate decision with every
criterion, online finetuning (curve and any rollback) and the exported policy (files,
parity) — each section says so when its stage did not run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from o2o.datasets import EpisodeStore
from o2o.pipeline.dag import Stage


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def dataset_section(out: Path, data: dict) -> list[str]:
    """The dataset as it stands now (online episodes appended by finetuning included), with the
    version the offline policy was trained on marked: growth and returns per source, and a
    table per source and behaviour policy."""
    plt = _plt()
    with EpisodeStore.open(data["path"], mode="r") as store:
        t = store.episodes_table()
    trained = int(data["episodes"])
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
        rows.append(f"| {s} | {pid} | {int(m.sum())} | {int(t['length'][m].sum())} | {np.mean(t['returns'][m]):.1f} | "
                    f"{_fmt(float(np.nanmean(succ)) if np.isfinite(succ).any() else None, '.2f')} |")
    now = len(t["index"])
    grown = (f" It now holds {now} episodes ({int(t['length'].sum())} steps): {now - trained} appended since."
             if now > trained else "")
    return [f"## Dataset\n\n`{data['path']}`: the offline policy was trained on version "
            f"{trained}@{data['fingerprint'][:12]} ({data['transitions']} transitions).{grown}\n", *rows, "",
            "![dataset](dataset.png)", ""]


def training_section(out: Path, ckpt: dict) -> list[str]:
    plt = _plt()
    lines = [f"## Offline training\n\n{ckpt['algo']}, {ckpt['updates']} updates; checkpoint `{ckpt['path']}` "
             f"chosen by {ckpt['selection']}.\n"]
    metrics = Path(ckpt["summary"]).parent / "csv" / "metrics.csv"
    hist = ckpt.get("evaluations") or []
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    if metrics.exists():
        rows = list(csv.DictReader(open(metrics)))
        for key in sorted({k for r in rows for k in r if k.startswith("train/") and k.endswith("_loss")}):
            pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
            if pts:
                ax[0].plot(*zip(*pts), label=key.removeprefix("train/"))
        ax[0].set(xlabel="update", title="training losses", yscale="symlog")
        ax[0].legend(fontsize=8)
    if hist:
        steps = [h["step"] for h in hist]
        ax[1].plot(steps, [h["return_mean"] for h in hist], "o-", label="return (simulated)")
        if all("q_start_mean" in h for h in hist):
            ax[1].plot(steps, [h["q_start_mean"] for h in hist], "s--", label="Q(start), estimated")
            ax[1].plot(steps, [h["mc_discounted_return_mean"] for h in hist], "^:", label="discounted return, achieved")
        ax[1].set(xlabel="update", title="periodic evaluation")
        ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=90)
    plt.close(fig)
    return [*lines, "![training](training.png)", ""]


def evaluation_section(ev: dict | None) -> list[str]:
    if ev is None:
        return ["## Evaluation\n\nThe evaluate stage did not run.\n"]
    s, ope, d = ev.get("sim") or {}, ev.get("ope") or {}, ev["data"]
    rows = ["| | return | success | discounted return | Q(start) estimated | FQE |", "|---|---:|---:|---:|---:|---:|",
            f"| dataset behaviour | {d['return_mean']:.1f} | {_fmt(d['success_rate'], '.2f')} | - | - | - |",
            f"| offline policy | {_fmt(s.get('return_mean'), '.1f')} | {_fmt(s.get('success_rate'), '.2f')} | "
            f"{_fmt(s.get('mc_discounted_return_mean'), '.1f')} | {_fmt(s.get('q_start_mean'), '.1f')} | "
            f"{_fmt(ope.get('ope/fqe_value'), '.1f')} |"]
    fqe = ("FQE the off-policy estimate from the dataset alone" if ope else
           "no off-policy estimate was asked for (`evaluation.ope=true` adds FQE, IS and DR next to simulation)")
    return [f"## Evaluation\n\n{_fmt(s.get('episodes'), '.0f')} simulated episodes on seeds not used to choose the "
            f"checkpoint; Q(start) is the critic's own estimate on the start states, {fqe}.\n", *rows, ""]


def gate_section(gate: dict | None) -> list[str]:
    if gate is None:
        return ["## Gate\n\nThe gate did not run.\n"]
    rows = ["| criterion | value | threshold | passed | margin |", "|---|---:|---:|:-:|---:|"]
    for c in gate["criteria"]:
        rows.append(f"| {c['name']} | {_fmt(c['value'])} | {c['op']} {_fmt(c['threshold'])} | "
                    f"{'yes' if c['passed'] else '**no**'} | {_fmt(c['margin'])} |")
    verdict = "**passed**" if gate["passed"] else "**failed**: the online stages did not run"
    return [f"## Gate\n\nThe gate {verdict}.\n", *rows, ""]


def finetune_section(out: Path, ft: dict | None) -> list[str]:
    """The finetuning curve (periodic evaluations by env step) with the pre-finetune level, the
    rollback threshold and any rollback marked; the final evaluation next to the starting level."""
    if ft is None:
        return ["## Online finetuning\n\nThis stage did not run in this pipeline.\n"]
    plt = _plt()
    curve, rb = ft.get("curve") or [], ft.get("rollback")
    metric = (rb or {}).get("metric", "return_mean")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if curve:
        steps = [c["step"] for c in curve]
        ax.plot(steps, [c.get(metric) for c in curve], "o-", label=f"{metric} (periodic evaluation)")
        ax.axhline(curve[0][metric], color="gray", ls="--", lw=1, label="pre-finetune level")
        if any("success_rate" in c for c in curve) and metric != "success_rate":
            ax2 = ax.twinx()
            ax2.plot(steps, [c.get("success_rate") for c in curve], "s:", color="tab:green", label="success rate")
            ax2.set(ylabel="success rate", ylim=(-0.05, 1.05))
            ax2.legend(fontsize=8, loc="upper right")
            ax.set_zorder(ax2.get_zorder() + 1)  # the metric and the rollback marks above the success curve
            ax.patch.set_visible(False)
    if rb:
        ax.axhline(rb["threshold"], color="tab:red", ls=":", lw=1, label="rollback threshold")
        ax.axvline(rb["step"], color="tab:red", lw=1.5)
        ax.plot([rb["step"]], [rb["value"]], "X", color="tab:red", ms=11, label=f"rollback (step {rb['step']})")
        ax.plot([rb["restored_step"]], [rb["restored_value"]], "*", color="tab:orange", ms=14,
                label=f"restored weights (step {rb['restored_step']})")
    ax.set(xlabel="online env steps", ylabel=metric, title="online finetuning" + (" — ROLLED BACK" if rb else ""))
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out / "finetune.png", dpi=90)
    plt.close(fig)
    ev, pre, online = ft.get("evaluation") or {}, ft.get("pre_finetune") or {}, ft.get("online") or {}
    rows = ["| | return | success |", "|---|---:|---:|",
            f"| before finetuning (periodic seeds) | {_fmt(pre.get('return_mean'), '.1f')} | "
            f"{_fmt(pre.get('success_rate'), '.2f')} |",
            f"| online episodes (exploring) | {_fmt(online.get('return_mean'), '.1f')} | "
            f"{_fmt(online.get('success_rate'), '.2f')} |",
            f"| finetuned policy (evaluation seeds) | {_fmt(ev.get('return_mean'), '.1f')} | "
            f"{_fmt(ev.get('success_rate'), '.2f')} |"]
    return [f"## Online finetuning\n\n{ft.get('summary', '')}\n", *rows, "", "![finetuning](finetune.png)", ""]


def export_section(ex: dict | None) -> list[str]:
    """Where the exported policy is, and how closely each backend matches the trained policy:
    the largest action difference on recorded observations, and the closed loop in simulation."""
    if ex is None:
        return ["## Export\n\nThis stage did not run in this pipeline.\n"]
    lines = [f"## Export\n\nThe {ex.get('origin', 'promoted')} policy, in `{ex['dir']}` (manifest "
             f"`{ex['manifest']}`).\n", "| file | bytes |", "|---|---:|"]
    lines += [f"| {name} | {_fmt((info or {}).get('bytes'), 'd')} |" for name, info in (ex.get("files") or {}).items()]
    lines += ["", "| backend | largest action difference vs torch |", "|---|---:|"]
    lines += [f"| {k} | {_fmt(v, '.1e')} |" for k, v in (ex.get("parity") or {}).items()]
    cl = ex.get("closed_loop") or {}
    if cl.get("runtime"):
        lines += ["", "| closed loop in simulation | return | success |", "|---|---:|---:|"]
        for name, label in (("trained", "trained policy (torch)"), ("runtime", "exported policy (o2o runtime)")):
            r = cl.get(name) or {}
            lines.append(f"| {label} | {_fmt(r.get('return_mean'), '.1f')} | {_fmt(r.get('success_rate'), '.2f')} |")
    return [*lines, ""]


def run_stage(ctx) -> dict:
    out = ctx.out_dir
    i = ctx.inputs
    lines = [f"# o2o run report\n\nRun folder `{ctx.run_dir}`.\n"]
    lines += dataset_section(out, i["dataset"])
    if "checkpoint" in i:
        lines += training_section(out, i["checkpoint"])
    lines += evaluation_section(i.get("evaluation"))
    lines += gate_section(i.get("gate"))
    lines += finetune_section(out, i.get("finetune"))
    lines += export_section(i.get("exported"))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    ctx.log(f"  report: {path}")
    return {"report": {"path": str(path), "plots": sorted(p.name for p in out.glob("*.png"))}}


STAGE = Stage("report", reads=("dataset",), writes=("report",), run=run_stage,
              optional=("checkpoint", "evaluation", "gate", "finetune", "exported"),
              doc="a Markdown page with plots: data, training, evaluation, gate, finetuning, export")
CONFIG_KEYS = ("report",)

