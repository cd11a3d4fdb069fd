"""The export manifest: what an exported policy expects, what it promises, and its files' hashes.

``manifest.json`` sits next to the exported files. It is plain JSON, read by the Python
runtime here and meant to be read by controllers in any language:

- ``observation``: ``dim``, ``dtype`` and ``layout`` — the named fields of the flat
  observation vector in order (``key``, ``shape``, ``start``, ``stop``), so a controller
  can assemble the vector from its named sensor values;
- ``action``: ``dim``, ``dtype``, ``low``/``high`` in env units (``"inf"``/``"-inf"``
  strings where unbounded: JSON has no infinity);
- ``control``: ``frequency_hz``, ``period_s``, ``controller_type`` (e.g. ``OSC_POSE``);
- ``policy``, ``env``, ``dataset``, ``evaluation``, ``parity``, ``runtime`` (guard
  defaults), ``versions`` and ``files``: the SHA-256 and size of every other file of the
  export, checked on load so a modified or swapped file is refused.

NumPy-free and torch-free: the runtime loads this module on a robot computer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

FORMAT = "o2o-export"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "policy.onnx"
TORCHSCRIPT_NAME = "policy.pt"
REFERENCE_NAME = "reference.npz"

#: Top-level sections every manifest has (``evaluation`` may be empty, never absent).
REQUIRED_SECTIONS = ("format", "format_version", "created", "policy", "observation", "action", "control", "env",
                     "dataset", "evaluation", "onnx", "torchscript", "parity", "runtime", "versions", "files")


class ManifestError(ValueError):
    """An export folder that cannot be trusted: missing or malformed manifest, missing or modified file."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_unchanged(path: str | os.PathLike, sha256: str) -> bool:
    """True when ``path`` exists and still has the SHA-256 recorded for it."""
    return Path(path).exists() and sha256_file(path) == sha256


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest's record of one file: ``{"sha256": ..., "bytes": ...}``."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def bounds_to_json(values) -> list:
    """Floats for JSON, with infinities as ``"inf"``/``"-inf"`` strings (as env space descriptions store them)."""
    out = []
    for v in values:
        v = float(v)
        out.append(("inf" if v > 0 else "-inf") if math.isinf(v) else v)
    return out


def bounds_from_json(values, where: str) -> list[float]:
    """Inverse of :func:`bounds_to_json`; NaN or anything else is refused."""
    out = []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ManifestError(f"{where}[{i}] = {v!r} is not a number") from None
        if math.isnan(f):
            raise ManifestError(f"{where}[{i}] is NaN")
        out.append(f)
    return out


def write_manifest(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` (sorted keys, indented) and return its path."""
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def hash_files(directory: str | os.PathLike, names) -> dict[str, dict[str, Any]]:
    """``files`` section for ``names`` inside ``directory``."""
    return {name: file_entry(Path(directory) / name) for name in sorted(names)}


def verify_files(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Every file the manifest lists exists with its recorded size and SHA-256, else :class:`ManifestError`."""
    directory = Path(directory)
    files = manifest.get("files")
    if not isinstance(files, Mapping) or not files:
        raise ManifestError(f"export {str(directory)!r}: manifest lists no files (section 'files' empty or missing)")
    for name, entry in files.items():
        if Path(name).name != name:
            raise ManifestError(f"export {str(directory)!r}: manifest file name {name!r} is not a plain file name")
        path = directory / name
        if not path.is_file():
            raise ManifestError(f"export {str(directory)!r}: file {name!r} listed in the manifest is missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise ManifestError(f"export {str(directory)!r}: file {name!r} has {size} bytes, the manifest says "
                                f"{entry.get('bytes')} (modified after export; export the checkpoint again)")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise ManifestError(f"export {str(directory)!r}: file {name!r} sha256 {digest[:16]}... != manifest's "
                                f"{str(entry.get('sha256'))[:16]}... (modified after export; export the checkpoint "
                                "again)")


def check_manifest(manifest: Any, where: str) -> None:
    """Structure checks a consumer relies on: format, sections, dims, layout and bounds agree."""
    if not isinstance(manifest, Mapping):
        raise ManifestError(f"{where}: manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{where}: not an o2o export manifest (format {manifest.get('format')!r}, want {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(f"{where}: manifest format_version {manifest.get('format_version')!r} is not supported "
                            f"(this o2o reads {FORMAT_VERSION})")
    missing = [k for k in REQUIRED_SECTIONS if k not in manifest]
    if missing:
        raise ManifestError(f"{where}: manifest lacks sections {missing}")
    files = manifest["files"]
    for section in ("onnx", "torchscript"):
        name = (manifest[section] or {}).get("file") if isinstance(manifest[section], Mapping) else None
        if not isinstance(files, Mapping) or name not in files:
            raise ManifestError(f"{where}: the {section} file {name!r} is not listed (with its hash) in 'files'")
    obs, act = manifest["observation"], manifest["action"]
    try:
        obs_dim, act_dim = int(obs["dim"]), int(act["dim"])
        layout = list(obs["layout"])
        low, high = act["low"], act["high"]
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestError(f"{where}: observation/action sections malformed ({type(e).__name__}: {e})") from None
    pos = 0
    for i, f in enumerate(layout):
        size = math.prod(int(s) for s in f.get("shape", [])) if f.get("shape") else 1
        if f.get("start") != pos or f.get("stop") != pos + size:
            raise ManifestError(f"{where}: observation.layout[{i}] ({f.get('key')!r}) spans "
                                f"[{f.get('start')}, {f.get('stop')}), expected [{pos}, {pos + size}) for shape "
                                f"{f.get('shape')}")
        pos += size
    if pos != obs_dim:
        raise ManifestError(f"{where}: observation layout covers {pos} values, observation.dim is {obs_dim}")
    lo = bounds_from_json(low, f"{where}: action.low")
    hi = bounds_from_json(high, f"{where}: action.high")
    if len(lo) != act_dim or len(hi) != act_dim:
        raise ManifestError(f"{where}: action bounds have {len(lo)}/{len(hi)} values, action.dim is {act_dim}")
    bad = [i for i in range(act_dim) if not lo[i] <= hi[i]]
    if bad:
        raise ManifestError(f"{where}: action.low > action.high at dims {bad}")


def load_manifest(directory: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read and check ``<directory>/manifest.json``; with ``verify`` also every file's hash."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"export {str(directory)!r}: no {MANIFEST_NAME} (not an o2o export folder; create one with "
                            "`o2o export ckpt=...`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"export {str(directory)!r}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    check_manifest(manifest, f"export {str(directory)!r}")
    if verify:
        verify_files(directory, manifest)
    return manifest
