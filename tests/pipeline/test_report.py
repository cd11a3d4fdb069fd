"""The report's figures are readable: every loss on its own axis with labelled ticks, a finetuning
curve whose axis does not blow up a fraction of a percent, legends that cover no curve; and the
offline -> online learning curve of a real run carries the artifacts' numbers, on the page and in the plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from o2o.pipeline.stages.report import finetune_figure, training_figure


def labelled_yticks(ax) -> list[str]:
    """The y tick labels shown inside the axis's limits (major and minor), after drawing."""
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_ylim())
    ticks = [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
    return [
        t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi
    ]


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_every_loss_gets_its_own_readable_axis():
    steps = np.arange(50, 3001, 50)
    rows = [
        {
            "step": str(s),
            "train/critic_loss": str(300.0 * np.exp(-s / 200) + 0.2),  # falls 1000x: log axis
            "train/actor_loss": str(-5.0 - s / 200),
            "train/value_loss": str(0.01 + 0.002 * np.sin(s)),
            "epoch": "0",
        }
        for s in steps
    ]
    rows.append({"step": "3000", "eval/return_mean": "1.0"})  # an evaluation row carries no loss
    fig = training_figure(rows, [{"step": 1000, "return_mean": 1.0}, {"step": 2000, "return_mean": 2.0}])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"critic_loss (log axis)", "actor_loss", "value_loss", "periodic evaluation"}
    assert panels["critic_loss (log axis)"].get_yscale() == "log" and panels["actor_loss"].get_yscale() == "linear"
    for name in ("critic_loss (log axis)", "actor_loss", "value_loss"):
        labels = labelled_yticks(panels[name])
        assert len(set(labels)) >= 3, (name, labels)  # not just "0" and "10^0"
    assert "each on its own axis; log where a loss fell by more than 30x" in fig._suptitle.get_text()


def test_the_finetuning_axis_does_not_exaggerate_a_tiny_change_and_the_legend_covers_no_curve():
    curve = [
        {"step": s, "return_mean": v, "success_rate": 1.0}
        for s, v in [(0, 177.3), (1000, 177.9), (2000, 178.3), (3000, 177.8)]
    ]
    fig = finetune_figure({"curve": curve, "rollback": None})
    ax = next(a for a in fig.axes if a.get_ylabel() == "return_mean")
    lo, hi = ax.get_ylim()
    assert lo <= 177.3 * 0.9 and hi >= 177.3 * 1.1  # +-10% of the pre-finetune level at least
    assert "at least ±10% of the pre-finetune level" in ax.get_title()
    fig.canvas.draw()
    legends = [a.get_legend() for a in fig.axes if a.get_legend() is not None]
    assert len(legends) == 1  # one legend for both axes, success rate included
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert "success rate (right axis)" in texts and "pre-finetune level" in texts
    box = legends[0].get_window_extent()
    assert not any(overlaps(box, a.get_window_extent()) for a in fig.axes)  # outside every plotting area


def test_a_rollback_keeps_its_threshold_and_marks_in_view():
    curve = [{"step": 0, "return_mean": 100.0}, {"step": 100, "return_mean": 60.0}, {"step": 200, "return_mean": 50.0}]
    rb = {
        "metric": "return_mean",
        "threshold": 90.0,
        "step": 200,
        "value": 50.0,
        "restored_step": 0,
        "restored_value": 100.0,
    }
    fig = finetune_figure({"curve": curve, "rollback": rb})
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert lo < 50.0 and hi > 110.0 and "ROLLED BACK" in ax.get_title()


# ---------------------------------------------------------------- the offline -> online learning curve
@pytest.fixture(scope="module")
def finetuned_run(tmp_path_factory):
    """A real run through finetuning on the point-maze room, tiny budgets: its artifacts and report."""
    from o2o.pipeline import run as R
    from o2o.pipeline.config import load_config

    tmp = tmp_path_factory.mktemp("curve")
    cfg = load_config(
        "run",
        [
            "env=pointmaze",
            "env.id=Open",
            "env.max_episode_steps=60",
            "env.kwargs.start_cells=[[3,1]]",
            "env.kwargs.goal_cells=[[1,3]]",
            f"dataset.path={tmp / 'room.zarr'}",
            f"run_dir={tmp / 'run'}",
            f"state_dir={tmp / '.state'}",
            "collect.behaviors=[{behavior: scripted, episodes: 4},{behavior: random, episodes: 4}]",
            "algo.hidden=[32,32]",
            "algo.gamma=0.95",
            "trainer.max_steps=100",
            "eval.every=100",
            "eval.episodes=2",
            "evaluation.episodes=3",
            "finetune.steps=180",
            "finetune.warmup_steps=60",
            "finetune.eval.every=60",
            "finetune.eval.episodes=2",
            "gate.return_vs_data_se=null",
            "gate.max_q_overestimation=null",
            "pipeline.stages=[collect,pretrain,evaluate,gate,finetune,report]",
        ],
    )
    r = R.run(cfg)
    assert r.record("finetune").status == "ran", r.record("gate").message
    return r


def test_the_report_draws_the_offline_to_online_learning_curve_from_real_artifacts(finetuned_run):
    from o2o.pipeline.stages.report import learning_curve_figure, learning_levels

    r = finetuned_run
    ft, ev = r.artifact("finetune"), r.artifact("evaluation")
    rep = r.artifact("report")
    assert "learning_curve.png" in rep.plots
    png = (Path(rep.path).parent / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The page links it with a caption of its numbers, each the artifacts' own.
    text = Path(rep.path).read_text()
    assert "![offline -> online learning curve](learning_curve.png)" in text
    caption = next(line for line in text.splitlines() if line.startswith("Offline -> online over"))
    assert f"over {ft.steps} online env steps" in caption
    assert (
        f"return {ev.sim['return_mean']:.1f} offline -> {ft.evaluation['return_mean']:.1f} finetuned "
        f"(behaviour data {ev.data.return_mean:.1f})" in caption
    )
    assert (
        f"success {ev.sim['success_rate']:.2f} offline -> {ft.evaluation['success_rate']:.2f} finetuned "
        f"(behaviour data {ev.data.success_rate:.2f})" in caption
    )
    # The figure: two panels, the curve by online env step, the offline and data levels as lines, the final
    # evaluation as a marker at the last step.
    levels = learning_levels(ft, ev)
    fig = learning_curve_figure(ft, ev)
    assert [a.get_title() for a in fig.axes] == ["return mean", "success rate"]
    for ax, m in zip(fig.axes, ("return_mean", "success_rate")):
        lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines()}
        curve = lines["online: periodic evaluation"]
        assert list(curve.get_xdata()) == [c["step"] for c in ft.curve]
        assert list(curve.get_ydata()) == pytest.approx([c[m] for c in ft.curve])
        assert list(lines["offline policy"].get_ydata()) == pytest.approx([ev.sim[m]] * 2)
        assert list(lines["behaviour data"].get_ydata()) == pytest.approx([getattr(ev.data, m)] * 2)
        final = lines["finetuned, final"]
        assert list(final.get_xdata()) == [ft.steps] and list(final.get_ydata()) == pytest.approx([ft.evaluation[m]])
        assert levels[m]["final"] == ft.evaluation[m]
        assert ax.get_xlabel() == "online env steps"


def test_without_a_success_signal_the_curve_has_one_panel(finetuned_run):
    import dataclasses

    from o2o.pipeline.stages.report import learning_curve_caption, learning_curve_figure

    ft, ev = finetuned_run.artifact("finetune"), finetuned_run.artifact("evaluation")
    no_success = dataclasses.replace(
        ft,
        curve=[{k: v for k, v in c.items() if k != "success_rate"} for c in ft.curve],
        evaluation={k: v for k, v in ft.evaluation.items() if k != "success_rate"},
    )
    ev2 = dataclasses.replace(
        ev,
        sim={k: v for k, v in ev.sim.items() if k != "success_rate"},
        data=dataclasses.replace(ev.data, success_rate=None),
    )
    fig = learning_curve_figure(no_success, ev2)
    assert [a.get_title() for a in fig.axes] == ["return mean"]
    assert "success" not in learning_curve_caption(no_success, ev2).split(".")[0]
