"""``o2o dataset import`` and ``o2o dataset export``: foreign formats in and out of a dataset.

The work is done in :mod:`o2o.datasets.formats`; this module only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console

console = Console(soft_wrap=True)


def _cmd_import(args: argparse.Namespace) -> int:
    """``o2o dataset import FORMAT SRC --to STORE``: append a foreign file's episodes (all or nothing)."""
    from omegaconf import OmegaConf

    from o2o.datasets.formats import import_file, make_selection
    from o2o.pipeline.config import load_config

    env_cfg = (
        OmegaConf.to_container(load_config("collect", [f"env={args.env}"]).env, resolve=True) if args.env else None
    )
    opts = {
        "minari_root": args.minari_root,
        "replay": args.replay,
        "max_state_error": args.max_state_error,
        "obs_keys": args.obs_keys,
        "filter_key": args.filter_key,
    }
    r = import_file(
        args.format,
        args.src,
        args.to,
        make_selection(args.source, args.episodes, args.version),
        source=args.set_source,
        policy_id=args.policy_id,
        env_cfg=env_cfg,
        action_bounds=args.action_bounds,
        **opts,
    )
    if args.json:
        print(json.dumps(r.to_dict(), indent=2, default=str))
        return 0
    first, last = (r.episodes[0], r.episodes[-1]) if r.episodes else (0, -1)
    console.print(
        f"imported {len(r.episodes)} episodes ({r.steps} steps) from {r.origin['format']} {r.origin['file']} "
        f"(sha256 {r.origin['sha256'][:16]}) into {'new ' if r.created else ''}dataset {r.path} as episodes "
        f"{first}..{last} in {r.seconds:.1f} s; version {r.version['episodes']}@{r.version['fingerprint'][:12]}",
        markup=False,
    )
    for k, v in r.stats.items():
        if k != "demos":
            console.print(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}", markup=False)
    for n in r.notes:
        console.print(f"note: {n}", markup=False)
    return 0


def _cmd_export_dataset(args: argparse.Namespace) -> int:
    """``o2o dataset export FORMAT STORE OUT``: write selected episodes as Minari or D4RL-style HDF5."""
    from o2o.datasets.formats import export_store, make_selection

    opts = {"minari_root": args.minari_root, "data_format": args.data_format, "author": args.author}
    r = export_store(
        args.format,
        args.path,
        args.out,
        make_selection(args.source, args.episodes, args.version),
        verify=not args.no_verify,
        **opts,
    )
    if args.json:
        print(json.dumps(r, indent=2, default=str))
        return 0
    v = r["version"]
    console.print(
        f"exported {r['episodes']} episodes ({r['steps']} steps) of {args.path} (up to version "
        f"{v['episodes']}@{v['fingerprint'][:12]}) to {r['path']}"
        + (f"; env spec {r['env_spec']}" if r.get("env_spec") else ""),
        markup=False,
    )
    for n in r.get("notes", []):
        console.print(f"note: {n}", markup=False)
    return 0


def _add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", action="append", help="keep episodes of this source (repeatable)")
    p.add_argument("--episodes", help="episode range START:STOP, or N,M,... (positions)")
    p.add_argument("--version", help="only episodes of dataset version COUNT[@FINGERPRINT]")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_dataset_io_parsers(dsub) -> None:
    """Add ``import`` and ``export`` to the ``o2o dataset`` sub-commands."""
    m = dsub.add_parser(
        "import",
        help="append episodes of a Minari / D4RL-style / robosuite / robomimic file",
        description="e.g. o2o dataset import robosuite demo.hdf5 --to data/lift.zarr --env lift",
    )
    m.add_argument("format", choices=["minari", "d4rl", "robosuite", "robomimic"])
    m.add_argument("src", help="file, Minari dataset folder, or Minari dataset id")
    m.add_argument("--to", required=True, help="target dataset (created if absent)")
    m.add_argument("--env", help="o2o env config the data belongs to (required for robosuite)")
    m.add_argument("--set-source", help="source of episodes without o2o provenance (default human)")
    m.add_argument("--policy-id", help="policy id of episodes without o2o provenance (default: file name)")
    m.add_argument("--action-bounds", choices=["error", "clip", "ignore"], help="a new dataset's action policy")
    m.add_argument("--minari-root", help="Minari datasets root (default MINARI_DATASETS_PATH or ~/.minari/datasets)")
    m.add_argument("--replay", choices=["actions", "states"], help="robosuite: replay actions (checked) or states")
    m.add_argument("--max-state-error", type=float, help="robosuite: largest state difference allowed (1e-4)")
    m.add_argument("--obs-keys", help="robomimic: observation keys to concatenate, comma-separated")
    m.add_argument("--filter-key", help="robomimic: only demos of mask/<key> (train, valid...)")
    _add_selection_args(m)
    m.set_defaults(func=_cmd_import)
    x = dsub.add_parser(
        "export",
        help="write episodes as a Minari dataset or a D4RL-style HDF5 file",
        description="e.g. o2o dataset export minari data/lift.zarr o2o/lift-human-v0 --source human",
    )
    x.add_argument("format", choices=["minari", "d4rl"])
    x.add_argument("path", help="dataset to export from")
    x.add_argument("out", help="Minari dataset id (minari) or output .hdf5 file (d4rl)")
    x.add_argument("--minari-root", help="Minari datasets root (default MINARI_DATASETS_PATH or ~/.minari/datasets)")
    x.add_argument("--data-format", choices=["hdf5", "arrow"], help="Minari storage (default hdf5)")
    x.add_argument("--author", help="Minari: author recorded in the dataset")
    x.add_argument(
        "--no-verify", action="store_true", help="skip checking each exported episode against its committed digest"
    )
    _add_selection_args(x)
    x.set_defaults(func=_cmd_export_dataset)
