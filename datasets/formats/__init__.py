"""Import foreign datasets into an episode store, and export a store's episodes to foreign formats.

Formats: Minari (HDF5 and Arrow storage), D4RL-style HDF5, robosuite ``demo.hdf5``
(replayed in the o2o env) and robomimic low-dim HDF5 (import only). :func:`import_file` and
:func:`export_store` are the entry points (``o2o dataset import|export``); each format is
one module and one entry in :data:`IMPORTERS` / :data:`EXPORTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from o2o.datasets.formats.common import (
    ForeignData,
    ForeignFormatError,
    ImportResult,
    Selection,
    append_foreign,
    env_problems,
    make_selection,
)
from o2o.datasets.store import EpisodeStore


@dataclass(frozen=True)
class Format:
    """A reader or writer and the format-specific options it accepts."""

    run: Callable[..., Any]
    options: frozenset[str]


def _minari_in(src, sel, source, policy_id, env_cfg, minari_root=None) -> ForeignData:
    from o2o.datasets.formats.minari_io import read_minari

    return read_minari(src, minari_root, sel, source, policy_id, env_cfg)


def _d4rl_in(src, sel, source, policy_id, env_cfg) -> ForeignData:
    from o2o.datasets.formats.d4rl import read_d4rl

    return read_d4rl(src, sel, source, policy_id, env_cfg)


def _robosuite_in(src, sel, source, policy_id, env_cfg, replay="actions", max_state_error=1e-4) -> ForeignData:
    from o2o.datasets.formats.robosuite_demo import read_robosuite_demo

    if env_cfg is None:
        raise ValueError("robosuite demos are replayed in an o2o env: pass the env (e.g. --env lift)")
    return read_robosuite_demo(src, env_cfg, sel, source, policy_id, replay, float(max_state_error))


def _robomimic_in(src, sel, source, policy_id, env_cfg, obs_keys=None, filter_key=None) -> ForeignData:
    from o2o.datasets.formats.robomimic import read_robomimic

    keys = obs_keys.split(",") if isinstance(obs_keys, str) else obs_keys
    return read_robomimic(src, sel, source, policy_id, keys, filter_key, env_cfg)


def _minari_out(store, idx, out, sel, minari_root=None, data_format="hdf5", author=None) -> dict:
    from o2o.datasets.formats.minari_io import export_minari

    return export_minari(store, idx, str(out), minari_root, data_format, sel, author)


def _d4rl_out(store, idx, out, sel) -> dict:
    from o2o.datasets.formats.d4rl import export_d4rl

    return export_d4rl(store, idx, out, sel)


IMPORTERS: dict[str, Format] = {
    "minari": Format(_minari_in, frozenset({"minari_root"})),
    "d4rl": Format(_d4rl_in, frozenset()),
    "robosuite": Format(_robosuite_in, frozenset({"replay", "max_state_error"})),
    "robomimic": Format(_robomimic_in, frozenset({"obs_keys", "filter_key"})),
}
EXPORTERS: dict[str, Format] = {
    "minari": Format(_minari_out, frozenset({"minari_root", "data_format", "author"})),
    "d4rl": Format(_d4rl_out, frozenset()),
}


def _options(kind: str, table: dict[str, Format], fmt: str, options: Mapping[str, Any]) -> tuple[Format, dict]:
    spec = table.get(fmt)
    if spec is None:
        raise ValueError(f"{kind} format {fmt!r} not one of {sorted(table)}")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - spec.options)
    if unknown:
        raise ValueError(f"{kind} format {fmt!r} takes no option {unknown[0]!r} (options: {sorted(spec.options)})")
    return spec, given


def import_file(
    fmt: str,
    src: str | Path,
    target: str | Path,
    selection: Selection = Selection(),
    source: str | None = None,
    policy_id: str | None = None,
    env_cfg: Mapping | None = None,
    action_bounds: str | None = None,
    **options: Any,
) -> ImportResult:
    """Read ``src`` (format ``fmt``) and append the selected episodes to the store at ``target``.

    ``source``/``policy_id`` label episodes that carry no o2o provenance (default source
    ``human``); ``env_cfg`` is the o2o env config the data belongs to (required for
    robosuite demos, which are replayed in it). All or nothing: on any error the store is
    left unchanged (and not created).
    """
    spec, opts = _options("import", IMPORTERS, fmt, options)
    if fmt != "minari" and not Path(src).exists():
        raise FileNotFoundError(f"{src}: no such file")
    data = spec.run(src, selection, source, policy_id, env_cfg, **opts)
    if env_cfg is not None:
        problems = env_problems(data.env, env_cfg)
        if problems:
            raise ForeignFormatError(
                f"{data.origin['file']} records another env than --env "
                f"{env_cfg.get('name')!r}: " + "; ".join(problems) + " (nothing appended)"
            )
    return append_foreign(target, data, action_bounds)


def export_store(
    fmt: str,
    store_path: str | Path,
    out: str | Path,
    selection: Selection = Selection(),
    verify: bool = True,
    **options: Any,
) -> dict:
    """Write the selected episodes of the store at ``store_path`` to ``out`` in format ``fmt``.

    Every exported episode is checked against its committed digest first (``verify=False`` skips
    that): select the intact episodes (``o2o dataset verify`` names the others) to rescue them."""
    spec, opts = _options("export", EXPORTERS, fmt, options)
    with EpisodeStore.open(store_path, mode="r", verify=verify) as store:
        idx = store.select(
            sources=list(selection.sources) if selection.sources else None,
            episodes=selection.episodes
            if isinstance(selection.episodes, slice)
            else (list(selection.episodes) if selection.episodes else None),
            version=selection.version,
        )
        result = spec.run(store, idx, out, selection, **opts)
        result["version"] = store.version_at(int(idx.max()) + 1).to_dict() if len(idx) else None
    return result


__all__ = [
    "EXPORTERS",
    "IMPORTERS",
    "ForeignFormatError",
    "ImportResult",
    "Selection",
    "export_store",
    "import_file",
    "make_selection",
]
