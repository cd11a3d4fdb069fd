"""The ``o2o`` command line.

o2o collect [key=value ...]          log episodes into the dataset (Hydra overrides)
o2o pretrain [key=value ...]         train an offline algorithm on the dataset
o2o evaluate [key=value ...]         off-policy estimates of checkpoints (+ simulated returns)
o2o export ckpt=PATH [key=value ...] ONNX + TorchScript + manifest, verified against the torch policy
o2o serve export_dir=DIR [key=value] guarded actions for controllers over ZeroMQ on localhost
o2o dataset info PATH [--json]       what a dataset holds
o2o dataset verify PATH              check every invariant (exit 1 with reasons)
o2o dataset import FORMAT SRC --to PATH   append a Minari/D4RL/robosuite/robomimic file's episodes
o2o dataset export FORMAT PATH OUT   write episodes as a Minari dataset or D4RL-style HDF5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _compose(name: str, args: argparse.Namespace, resolve: bool = True):
    """The ``configs/<name>.yaml`` config with the command's overrides; with ``--cfg`` print it and
    return None (the command then exits 0)."""
    from omegaconf import OmegaConf

    from o2o.pipeline.config import load_config

    cfg = load_config(name, args.overrides)
    if args.cfg:
        console.print(OmegaConf.to_yaml(cfg, resolve=resolve), markup=False)
        return None
    return cfg


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog is built only when help is shown (building it composes configs)."""

    epilog_factory = None

    def format_help(self) -> str:
        if self.epilog is None and self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()


def _hydra_command(sub, name: str, func, help: str) -> argparse.ArgumentParser:
    """A subcommand taking Hydra overrides and ``--cfg``, e.g. ``o2o <name> key=value ...``; its help
    lists the config groups, main keys and examples (:mod:`o2o.pipeline.cli_help`)."""
    from o2o.pipeline.cli_help import command_epilog

    c = sub.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}. Takes Hydra overrides: group=option and key=value.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.epilog_factory = lambda: command_epilog(name)
    c.add_argument("overrides", nargs="*", help="Hydra overrides: group=option, key=value")
    c.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    c.set_defaults(func=func)
    return c


def _cmd_collect(args: argparse.Namespace) -> int:
    from o2o.pipeline.progress import collect_progress
    from o2o.pipeline.stages.collect import collect

    cfg = _compose("collect", args)
    if cfg is None:
        return 0
    with collect_progress(cfg) as bar:  # none over a teleoperation's own status line
        result = collect(cfg, progress=bar.update)
    _print_collect_summary(result)
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from o2o.pipeline.stages.pretrain import pretrain

    cfg = _compose("pretrain", args)
    if cfg is None:
        return 0
    result = pretrain(cfg)
    if result.selection.startswith("process "):  # a DDP worker other than rank 0: rank 0 reports
        return 0
    t = Table(
        title=f"pretrained {cfg.algo.name} for {result.updates} updates in {result.seconds:.0f} s "
        f"on {result.dataset['episodes']} episodes ({result.dataset['transitions']} transitions)"
    )
    for col in ("step", "return", "success", "score", "Q(start)", "MC return"):
        t.add_column(col, justify="right")
    fmt = lambda d, k: "-" if d.get(k) is None else f"{d[k]:.3g}"  # noqa: E731
    for h in result.evaluations:
        t.add_row(
            str(h["step"]),
            fmt(h, "return_mean"),
            fmt(h, "success_rate"),
            fmt(h, "normalized_score"),
            fmt(h, "q_start_mean"),
            fmt(h, "mc_discounted_return_mean"),
        )
    if result.evaluations:
        console.print(t)
    v = result.dataset["version"]
    console.print(
        f"best checkpoint: {result.best_checkpoint}\n  chosen by {result.selection}\n"
        f"  dataset {result.dataset['path']} version {v['episodes']}@{v['fingerprint'][:12]}\n"
        f"  trained in {result.precision} precision{auto_note(cfg, result.precision_rates)}\n"
        f"  run folder {result.run_dir} (summary.json, tb/, csv/)",
        markup=False,
    )
    return 0


def auto_note(cfg, rates: dict) -> str:
    """What ``trainer.precision=auto`` measured (updates/s per candidate), or that it applied its rule."""
    if str(cfg.trainer.precision) != "auto":
        return ""
    if not rates:
        return " (trainer.precision=auto: bf16 not native here, or not measured for this algorithm)"
    return " (trainer.precision=auto, measured " + ", ".join(f"{p} {r:,.0f} updates/s" for p, r in rates.items()) + ")"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from o2o.pipeline.stages.evaluate import evaluate

    cfg = _compose("evaluate", args)
    if cfg is None:
        return 0

    def done(row: dict) -> None:
        console.print(
            f"evaluated {row['checkpoint']}: FQE {row['ope/fqe_value']:.4g} in {row['ope/seconds']:.0f} s", markup=False
        )

    result = evaluate(cfg, progress=done)
    _print_evaluate_table(result)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from o2o.pipeline.stages.export import export

    cfg = _compose("export", args, resolve=False)
    if cfg is None:
        return 0
    r = export(cfg)
    t = Table(title=f"exported {r.checkpoint} in {r.seconds:.1f} s")
    for col in ("file", "bytes", "sha256", "max abs diff vs torch"):
        t.add_column(col, justify="left" if col in ("file", "sha256") else "right")
    diff = {"policy.onnx": r.parity.get("onnxruntime"), "policy.pt": r.parity.get("torchscript")}
    for name, entry in r.files.items():
        d = diff.get(name)
        t.add_row(name, str(entry["bytes"]), entry["sha256"][:16], "-" if d is None else f"{d:.2g}")
    console.print(t)
    console.print(f"parity on {r.observations_source}", markup=False)
    cl = r.closed_loop
    if cl:
        fmt = lambda v: "-" if v is None or v != v else f"{v:.2f}"  # noqa: E731  (None/NaN: no success signal)
        console.print(
            f"closed loop, {cl['episodes']} episodes: success {fmt(cl['runtime']['success_rate'])} through "
            f"the runtime vs {fmt(cl['trained']['success_rate'])} trained (noise +-"
            f"{fmt(cl.get('success_noise'))}); return {cl['runtime']['return_mean']:.4g} vs "
            f"{cl['trained']['return_mean']:.4g}; guards fired: {cl['guards'] or 'none'}",
            markup=False,
        )
    for note in r.notes:
        console.print(f"note: {note}", markup=False)
    console.print(
        f"export folder {r.out_dir} (manifest.json); serve it with: o2o serve export_dir={r.out_dir}", markup=False
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # The runtime side: no Hydra, no torch (the action server runs where the robot is).
    from o2o.deploy.server import parse_overrides, serve

    return serve(parse_overrides(args.overrides))


def _short_names(paths: list[str]) -> list[str]:
    """The shortest path suffixes that tell the checkpoints apart (``last.ckpt`` of two runs differ)."""
    from pathlib import PurePath

    parts = [PurePath(p).parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(paths)


def _print_evaluate_table(result) -> None:
    from o2o.policies.ope.selection import OPE_METRICS, estimate_text

    ds = result.dataset
    t = Table(
        title=f"off-policy evaluation on {ds['episodes']} episodes ({ds['transitions']} transitions) of "
        f"{ds['path']}, {result.seconds:.0f} s on {result.device}"
    )
    sim = result.sim is not None
    cols = ["checkpoint", "FQE", "IS", "WIS", "DR", "ESS"] + (
        ["sim disc. return", "sim return", "success"] if sim else []
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "checkpoint" else "right")
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.4g}"  # noqa: E731
    for name, r in zip(_short_names([r["checkpoint"] for r in result.rows]), result.rows):
        # Each estimate with its bootstrap interval under it.
        cells = [name, *(estimate_text(r, m, "\n") for m in OPE_METRICS), f"{r['ope/ess']:.1f}"]
        if sim:
            cells += [
                fmt(r.get("eval/mc_discounted_return_mean")),
                fmt(r.get("eval/return_mean")),
                fmt(r.get("eval/success_rate")),
            ]
        t.add_row(*cells)
    if result.spearman:
        rho = result.spearman
        t.add_section()
        t.add_row("Spearman vs sim disc. return", *(fmt(rho[m]) for m in OPE_METRICS), *[""] * (len(cols) - 5))
    # A pipe or a log file has no width; rich would squeeze nine columns (estimates with their
    # intervals) into 80 characters.
    out = console if console.is_terminal else Console(soft_wrap=True, width=max(console.width, 180))
    out.print(t)
    ope = result.ope
    fqe_ci = (
        f"FQE's from {ope['fqe_refits']} refits on resampled episodes"
        if ope.get("fqe_refits")
        else "FQE's holds its fitted critic fixed"
    )
    ci = ""
    if ope.get("bootstrap") or ope.get("fqe_refits"):
        ci = (
            f" In brackets: {ope['confidence']:.0%} bootstrap intervals over the dataset's episodes ("
            + (f"{ope['bootstrap']} resamples; " if ope.get("bootstrap") else "IS/WIS/DR: none, ope.bootstrap=0; ")
            + f"{fqe_ci})."
        )
    console.print(
        f"note: {result.note}{ci} ESS: Kish effective number of episodes (of {ds['episodes']}) under the "
        "clipped weights. The report holds every other figure (FQE ensemble spread, clipped fractions).",
        markup=False,
    )
    for w in result.warnings:
        console.print(f"warning: {w}", markup=False)
    if result.output:
        console.print(f"report: {result.output}", markup=False)


def _print_collect_summary(result) -> None:
    from o2o.datasets import EpisodeStore
    from o2o.datasets.inspect import dataset_info

    t = Table(
        title=f"collected {len(result.episodes)} episodes, {result.steps} steps in {result.seconds:.1f} s "
        f"({result.steps / max(result.seconds, 1e-9):.0f} steps/s)"
    )
    for col in ("source", "episodes", "steps", "return (mean)", "success"):
        t.add_column(col, justify="right")
    if not result.episodes and not EpisodeStore.is_dataset(result.path):
        console.print(f"nothing collected: no dataset was created at {result.path}", markup=False)
        return
    with EpisodeStore.open(result.path, verify=False) as store:  # the append checked the tail it built on
        info = dataset_info(store)
    for src, s in info["sources"].items():
        rate = "-" if s["success_rate"] is None else f"{s['success_rate']:.2f}"
        t.add_row(src, str(s["episodes"]), str(s["transitions"]), f"{s['return_mean']:.2f}", rate)
    console.print(t)
    rate = result.success_rate
    console.print(
        f"this run: return {sum(result.returns) / max(1, len(result.returns)):.2f} mean, success "
        f"{'-' if rate is None else f'{rate:.2f}'}; dataset {result.path}: {info['episodes']} episodes, "
        f"{info['transitions']} transitions, version {info['version']['fingerprint'][:12]}"
    )


def _cmd_info(args: argparse.Namespace) -> int:
    from o2o.datasets import EpisodeStore
    from o2o.datasets.inspect import dataset_info

    with EpisodeStore.open(args.path, verify=not args.no_verify) as store:
        info = dataset_info(store)
    damaged = info["integrity"]["problems"]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 1 if damaged else 0
    env = info["env"] or {}
    console.print(
        f"[bold]{info['path']}[/]  env {env.get('name')} ({env.get('id')}), "
        f"created {info['created']} by o2o {info['o2o_version']}"
    )
    console.print(
        f"{info['episodes']} episodes, {info['transitions']} transitions, "
        f"{info['size_on_disk_bytes'] / 2**20:.1f} MiB on disk, version "
        f"{info['version']['episodes']}@{info['version']['fingerprint'][:12]}"
    )
    t = Table()
    for col in ("source", "episodes", "transitions", "return mean [min, max]", "success", "interventions", "policies"):
        t.add_column(col)
    for src, s in info["sources"].items():
        rate = "-" if s["success_rate"] is None else f"{s['success_rate']:.2f}"
        t.add_row(
            src,
            str(s["episodes"]),
            str(s["transitions"]),
            f"{s['return_mean']:.2f} [{s['return_min']:.2f}, {s['return_max']:.2f}]",
            rate,
            str(s["interventions"]),
            ", ".join(s["policies"]),
        )
    console.print(t)
    if info["tasks"]:
        from rich.markup import escape

        t = Table(title="tasks (the reset options episodes started from)")
        for col in ("task", "episodes", "success"):
            t.add_column(col)
        for row in info["tasks"]:
            rate = "-" if row["success_rate"] is None else f"{row['success_rate']:.2f}"
            t.add_row(escape(json.dumps(row["task"], sort_keys=True)), str(row["episodes"]), rate)
        if info["episodes_without_task"]:
            t.add_row("(the env's own reset)", str(info["episodes_without_task"]), "")
        console.print(t)
    obs = ", ".join(f"{k} {tuple(v['shape'])} {v['dtype']}" for k, v in info["observation_keys"].items())
    a = info["action_space"]
    console.print(
        f"observations: {obs}\nactions: {tuple(a['shape'])} {a['dtype']} in [{min(a['low'])}, {max(a['high'])}]",
        markup=False,
    )
    if damaged:
        for p in damaged:
            err_console.print(f"DAMAGED {args.path}: {p}", markup=False)
        err_console.print(
            f"the figures above include the damaged episodes; run `o2o dataset verify {args.path}` for every problem",
            markup=False,
        )
        return 1
    console.print(
        f"integrity: {info['integrity']['checked']} checked, intact ({info['integrity']['seconds']:.2f} s)",
        markup=False,
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from o2o.datasets.inspect import verify_report
    from o2o.datasets.integrity import episode_ranges

    r = verify_report(args.path)
    for n in r.notes:
        console.print(f"note: {n}", markup=False)
    if r.problems:
        for p in r.problems:
            err_console.print(f"FAIL {args.path}: {p}", markup=False)
        if r.episodes and r.affected:
            intact = r.episodes - len(r.affected)
            err_console.print(
                f"{len(r.problems)} problem{'s' if len(r.problems) > 1 else ''}; episodes affected: "
                f"{episode_ranges(r.affected)} ({len(r.affected)} of {r.episodes}; the other {intact} "
                "are intact: a selection without the affected ones still loads, e.g. `o2o dataset export "
                "... --episodes` or `data.episodes=[start,stop]`)",
                markup=False,
            )
        return 1
    console.print(f"OK {args.path}: every invariant holds", markup=False)
    return 0


def _run_summary(res) -> None:
    """One screen: the data's behaviour vs the offline policy vs the finetuned one, and where the export is."""
    ev, ft, pol, ex = (res.artifact(n) for n in ("evaluation", "finetune", "policy", "exported"))
    if ev is None:
        return
    t = Table(title="behaviour data vs policies (evaluate stage's seeds)")
    for col in ("", "return", "success"):
        t.add_column(col, justify="left" if not col else "right")
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    d, sim = ev.data, ev.sim or {}
    t.add_row(f"dataset ({d.episodes} episodes)", fmt(d.return_mean, ".1f"), fmt(d.success_rate, ".2f"))
    t.add_row("offline policy", fmt(sim.get("return_mean"), ".1f"), fmt(sim.get("success_rate"), ".2f"))
    if ft is not None:
        e = ft.evaluation or {}
        t.add_row(
            "finetuned policy" + (" (rolled back)" if ft.rolled_back else ""),
            fmt(e.get("return_mean"), ".1f"),
            fmt(e.get("success_rate"), ".2f"),
        )
    console.print(t)
    if pol is not None:
        console.print(f"promoted: {pol.origin} ({pol.reason})", markup=False)
    if ex is not None:
        console.print(f"exported: {ex.dir} (manifest {ex.manifest})", markup=False)


def _cmd_run(args: argparse.Namespace) -> int:
    from o2o.pipeline import run as R

    cfg = _compose("run", args)
    if cfg is None:
        return 0
    if args.dry_run:
        t = Table(title=f"plan: {len(cfg.pipeline.stages)} stages, state in {cfg.state_dir}")
        t.add_column("stage")
        t.add_column("what happens")
        for name, what in R.plan(cfg):
            t.add_row(name, what)
        console.print(t)
        return 0
    force = tuple(s for s in (args.force or "").split(",") if s)
    res = R.run(cfg, log=lambda m: console.print(m, markup=False, highlight=False), force=force)
    t = Table(title=f"o2o run: {cfg.run_dir}")
    for col in ("stage", "status", "seconds", "note"):
        t.add_column(col, justify="right" if col == "seconds" else "left")
    for r in res.records:
        t.add_row(r.name, r.status, f"{r.seconds:.1f}", r.message[:100])
    console.print(t)
    _run_summary(res)
    console.print(f"manifest: {cfg.run_dir}/manifest.json", markup=False)
    if res.artifact("report") is not None:
        console.print(f"report:   {res.artifact('report').path}", markup=False)
    failed = [r for r in res.records if r.status == "failed"]
    if failed:
        for r in failed:
            err_console.print(f"o2o run: stage {r.name} failed: {r.message}", markup=False)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    from o2o.pipeline.cli_help import command_epilog

    p = _Parser(
        prog="o2o",
        description="Offline-to-online robot learning pipelines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.epilog_factory = lambda: command_epilog(None)
    sub = p.add_subparsers(dest="command", required=True)
    r = _hydra_command(
        sub, "run", _cmd_run, "the whole workflow as a DAG of stages (collect, pretrain, evaluate, gate, ...)"
    )
    r.add_argument("--dry-run", action="store_true", help="print the plan (what runs, what is unchanged) and exit")
    r.add_argument("--force", default=None, help="comma-separated stages to rerun even if unchanged")
    _hydra_command(sub, "collect", _cmd_collect, "log episodes of a behaviour policy into the dataset")
    _hydra_command(
        sub,
        "pretrain",
        _cmd_pretrain,
        "train an offline algorithm (BC, IQL, CQL, Cal-QL, AWAC, TD3+BC, COMBO, SAC, RLPD, WSRL) on the dataset",
    )
    _hydra_command(
        sub, "evaluate", _cmd_evaluate, "off-policy estimates (FQE, IS, WIS, DR) of checkpoints, next to simulation"
    )
    _hydra_command(
        sub, "export", _cmd_export, "export a checkpoint to ONNX + TorchScript + manifest, verified against torch"
    )
    s = sub.add_parser(
        "serve",
        help="serve an export's guarded actions on localhost (ZeroMQ, o2o-action/1)",
        description="key=value arguments: export_dir=DIR [host=127.0.0.1] [port=5555] "
        "[max_delta=...] [safe_action=[...]] [deadline_s=...] [watchdog_latch=true] "
        "[key_file=PATH: require the export's signature] (no Hydra: runtime side)",
    )
    s.add_argument("overrides", nargs="*", help="key=value")
    s.set_defaults(func=_cmd_serve)
    d = sub.add_parser("dataset", help="inspect and check datasets")
    dsub = d.add_subparsers(dest="dataset_command", required=True)
    i = dsub.add_parser("info", help="episodes, transitions, per-source returns, spaces, size")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the content check (every episode's digest; the structure is always checked)",
    )
    i.set_defaults(func=_cmd_info)
    v = dsub.add_parser("verify", help="check every invariant; exit 1 with the reasons when one fails")
    v.add_argument("path")
    v.set_defaults(func=_cmd_verify)
    from o2o.pipeline.cli_dataset import add_dataset_io_parsers  # import / export: their own module

    add_dataset_io_parsers(dsub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop) as an interruption: ``finally`` blocks run, so pending
    episodes are committed, staging folders removed and locks released, as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _on_sigterm(signum, frame) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    try:
        return int(args.func(args) or 0)
    except Terminated as e:
        err_console.print(f"terminated (signal {e.signum}); rerun the same command to resume")
        return 128 + e.signum
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except Exception as e:  # user-facing errors: one clear line, no traceback (O2O_DEBUG=1 shows it)
        import os

        if os.environ.get("O2O_DEBUG"):
            raise
        err_console.print(f"o2o {args.command}: error: {type(e).__name__}: {e}", markup=False)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
