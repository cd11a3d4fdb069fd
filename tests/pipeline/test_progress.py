"""Progress of long stages: a bar on a terminal; in a file, a pipe or CI a plain line every few
seconds with count, rate and ETA, and never a carriage return."""

from __future__ import annotations

import io
import os
import re

import pytest

from o2o.pipeline import run as R
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config
from o2o.pipeline.progress import Progress, default_every_s, is_terminal, line
from o2o.pipeline.stages.pretrain import pretrain

ROOM = [
    "env=pointmaze",
    "env.id=Open",
    "env.max_episode_steps=60",
    "env.kwargs.start_cells=[[3,1]]",
    "env.kwargs.goal_cells=[[1,3]]",
]
PERIODIC = r"\[{label}\] [\d,]+/{total} {unit} \(\d+%\), [\d.,]+ {unit}/s, ETA \d+:\d\d:\d\d"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_has_count_percentage_rate_eta_and_stats():
    assert line("pretrain", 1200, 3000, "updates", 12.0, {"critic_loss": 0.21345, "episodes": 1234}) == (
        "[pretrain] 1,200/3,000 updates (40%), 100 updates/s, ETA 0:00:18, critic_loss 0.213, episodes 1,234"
    )
    assert line("collect", 3, 20, "episodes", 2.0) == "[collect] 3/20 episodes (15%), 1.50 episodes/s, ETA 0:00:11"
    assert line("x", 0, 10, "steps", 5.0) == "[x] 0/10 steps (0%), 0.00 steps/s, ETA ?"
    assert line("x", 10, 10, "steps", 4.0, final=True) == "[x] 10/10 steps (100%) in 0:00:04, 2.50 steps/s"
    assert line("x", 4, 10, "steps", 4.0, final=True) == "[x] stopped at 4/10 steps (40%) after 0:00:04, 1.00 steps/s"
    # A resumed run counts its rate from where it started.
    assert line("x", 150, 200, "updates", 10.0, initial=100) == "[x] 150/200 updates (75%), 5.00 updates/s, ETA 0:00:10"


def test_lines_come_every_interval_and_once_at_the_end_with_stats_computed_only_then():
    clock, out, calls = FakeClock(), io.StringIO(), []

    def stats():
        calls.append(clock.now)
        return {"loss": 0.5}

    with Progress("pretrain", 40, "updates", every_s=10, stream=out, terminal=False, clock=clock) as p:
        for i in range(1, 36):  # one update a second
            clock.now += 1.0
            p.update(i, stats)
    lines = out.getvalue().splitlines()
    assert lines == [
        "[pretrain] 10/40 updates (25%), 1.00 updates/s, ETA 0:00:30, loss 0.5",
        "[pretrain] 20/40 updates (50%), 1.00 updates/s, ETA 0:00:20, loss 0.5",
        "[pretrain] 30/40 updates (75%), 1.00 updates/s, ETA 0:00:10, loss 0.5",
        "[pretrain] stopped at 35/40 updates (88%) after 0:00:35, 1.00 updates/s, loss 0.5",
    ]
    assert calls == [110.0, 120.0, 130.0, 135.0] and "\r" not in out.getvalue()


def test_disabled_progress_and_progress_never_updated_write_nothing():
    out = io.StringIO()
    with Progress("a", 10, enabled=False, stream=out, terminal=False, every_s=0) as p:
        p.update(5)
    with Progress("b", 10, stream=out, terminal=False, every_s=0):
        pass  # failed before its first step: no "0/10" line
    assert out.getvalue() == ""


def test_the_interval_comes_from_the_environment_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.delenv("O2O_PROGRESS_EVERY_S", raising=False)
    assert default_every_s() == 10.0
    monkeypatch.setenv("O2O_PROGRESS_EVERY_S", "2.5")
    assert default_every_s() == 2.5
    monkeypatch.setenv("O2O_PROGRESS_EVERY_S", "0")
    with pytest.raises(ValueError, match=r"O2O_PROGRESS_EVERY_S='0': seconds between progress lines, a number > 0"):
        default_every_s()


def test_a_terminal_gets_a_bar_a_file_or_ci_gets_lines(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    main_fd, tty_fd = os.openpty()
    with os.fdopen(tty_fd, "w") as tty:
        assert is_terminal(tty) and not is_terminal(io.StringIO())
        monkeypatch.setenv("CI", "true")
        assert not is_terminal(tty)
    os.close(main_fd)


def _no_carriage_return(captured) -> str:
    assert "\r" not in captured.out and "\r" not in captured.err
    return captured.out


def test_pretrain_writes_periodic_lines_with_rate_eta_and_losses_when_captured(tmp_path, capfd, monkeypatch):
    data = tmp_path / "room.zarr"
    assert main(["collect", *ROOM, f"dataset.path={data}", "collect.episodes=6"]) == 0
    monkeypatch.setenv("O2O_PROGRESS_EVERY_S", "0.05")
    capfd.readouterr()
    pretrain(
        load_config(
            "pretrain",
            [
                *ROOM,
                f"dataset.path={data}",
                f"run_dir={tmp_path / 'pre'}",
                "algo.hidden=[32,32]",
                "algo.batch_size=32",
                "algo.log_every=10",
                "trainer.max_steps=300",
                "eval.enabled=false",
                "ope.select=false",
                "eval.every=300",
            ],
        )
    )
    out = _no_carriage_return(capfd.readouterr())
    periodic = re.findall(
        PERIODIC.format(label="pretrain", total="300", unit="updates") + r", .*critic_loss [\d.e-]+", out
    )
    assert periodic, out
    assert re.search(
        r"^\[pretrain\] 300/300 updates \(100%\) in \d+:\d\d:\d\d, [\d.,]+ updates/s, .*critic_loss", out, re.M
    ), out


def test_collect_reports_progress_inside_o2o_run_and_on_its_own(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("O2O_PROGRESS_EVERY_S", "0.01")
    cfg = load_config(
        "run",
        [
            *ROOM,
            f"dataset.path={tmp_path / 'room.zarr'}",
            f"run_dir={tmp_path / 'run'}",
            f"state_dir={tmp_path / 'state'}",
            "pipeline.stages=[collect]",
            "collect.behaviors=[{behavior: scripted, episodes: 30}]",
        ],
    )
    R.run(cfg, log=print)
    out = _no_carriage_return(capfd.readouterr())
    assert re.search(
        PERIODIC.format(label="collect scripted", total="30", unit="episodes")
        + r", steps/s [\d,]+, return -?[\d.]+, success [\d.]+",
        out,
    ), out
    assert re.search(r"^\[collect scripted\] 30/30 episodes \(100%\) in \d:\d\d:\d\d", out, re.M), out
    # collect.progress=false: neither a bar nor lines.
    assert (
        main(
            ["collect", *ROOM, f"dataset.path={tmp_path / 'room.zarr'}", "collect.episodes=3", "collect.progress=false"]
        )
        == 0
    )
    assert "[collect]" not in _no_carriage_return(capfd.readouterr())
    assert main(["collect", *ROOM, f"dataset.path={tmp_path / 'room.zarr'}", "collect.episodes=3"]) == 0
    assert re.search(r"^\[collect\] 3/3 episodes \(100%\) in", _no_carriage_return(capfd.readouterr()), re.M)
