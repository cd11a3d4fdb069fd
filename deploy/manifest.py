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
  export, checked on load so a modified or swapped file is refused;
- ``signature`` (optional): see below.

**The seal.** The file hashes protect the files, not the manifest itself, and the manifest
holds what keeps a robot safe (bounds, safe action, observation layout, the reference the
runtime self-tests against). So export binds the manifest into the ONNX model: the model's
``metadata_props`` entry ``o2o.manifest_seal`` holds one SHA-256 per top-level section of the
manifest (canonical JSON: sorted keys, no spaces, ASCII; of ``files`` every entry but the ONNX
file's own, which cannot contain itself; ``signature`` is not sealed), and the manifest's
hash of the ONNX file covers the seal in turn. The runtime recomputes the digests and
refuses any section changed, added or removed after export, by name (:func:`check_seal`),
and refuses an export without a seal (format 1: export again). The seal detects edits; it is
not a secret: whoever can run ``o2o export`` (or this module) can seal a manifest of their own.

**The signature** (optional) adds who may produce a deployable export: ``signature`` holds an
HMAC-SHA256 (:mod:`hmac`) under a deployment's secret key over the sealed digests and the ONNX
file's SHA-256 (which covers everything else). A runtime given the key
(``PolicyRuntime(..., key_file=...)``, ``o2o serve ... key_file=PATH``) refuses an unsigned
export or one signed with another key; without a key the signature is **not checked** (a signed
export loads like an unsigned one). HMAC is a shared secret: anyone holding the key can sign,
so keep it where exports are made and robots run, nowhere else.

NumPy-free and torch-free: the runtime loads this module on a robot computer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

# Re-exported: the export code and the pipeline stages import them from here.
from o2o.core.hashing import file_unchanged, sha256_file  # noqa: F401

FORMAT = "o2o-export"
FORMAT_VERSION = 2  # 2: the manifest is sealed into the ONNX model (1 had no seal: refused, export again)
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "policy.onnx"
TORCHSCRIPT_NAME = "policy.pt"
REFERENCE_NAME = "reference.npz"

#: Top-level sections every manifest has (``evaluation`` may be empty, never absent).
REQUIRED_SECTIONS = (
    "format",
    "format_version",
    "created",
    "policy",
    "observation",
    "action",
    "control",
    "env",
    "dataset",
    "evaluation",
    "onnx",
    "torchscript",
    "parity",
    "runtime",
    "versions",
    "files",
)


#: ``metadata_props`` key of the seal in the ONNX model, and the seal's own format tag.
SEAL_KEY = "o2o.manifest_seal"
SEAL_FORMAT = "o2o-manifest-seal/1"
SIGNATURE_SECTION = "signature"
SIGNATURE_ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16

_REEXPORT = "export the checkpoint again (o2o export ckpt=...)"


class ManifestError(ValueError):
    """An export folder that cannot be trusted: missing or malformed manifest, missing or modified file."""


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
            raise ManifestError(
                f"export {str(directory)!r}: file {name!r} has {size} bytes, the manifest says "
                f"{entry.get('bytes')} (modified after export; export the checkpoint again)"
            )
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise ManifestError(
                f"export {str(directory)!r}: file {name!r} sha256 {digest[:16]}... != manifest's "
                f"{str(entry.get('sha256'))[:16]}... (modified after export; export the checkpoint "
                "again)"
            )


# ---------------------------------------------------------------------- seal and signature
def canonical_json(value: Any) -> bytes:
    """The bytes a section is hashed as: JSON with sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def seal_digests(manifest: Mapping[str, Any]) -> dict[str, str]:
    """SHA-256 of each top-level section (``files`` without the ONNX file's entry; ``signature`` left out)."""
    onnx = manifest.get("onnx")
    onnx_name = onnx.get("file") if isinstance(onnx, Mapping) else None
    out = {}
    for name, value in manifest.items():
        if name == SIGNATURE_SECTION:
            continue
        if name == "files" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k != onnx_name}
        out[name] = hashlib.sha256(canonical_json(value)).hexdigest()
    return out


def seal_text(manifest: Mapping[str, Any]) -> str:
    """The seal export writes into the ONNX model's metadata (``SEAL_KEY``)."""
    return json.dumps({"format": SEAL_FORMAT, "hash": "sha256", "sections": seal_digests(manifest)}, sort_keys=True)


def check_seal(manifest: Mapping[str, Any], seal: str | None, where: str) -> dict[str, str]:
    """Refuse a manifest that differs from the one sealed into its ONNX model; returns the sealed digests.

    ``seal``: the model's ``SEAL_KEY`` metadata (None when absent). The error names every section
    changed, added or removed since export.
    """
    onnx_name = (manifest.get("onnx") or {}).get("file")
    if seal is None:
        raise ManifestError(
            f"{where}: {onnx_name!r} carries no manifest seal (metadata {SEAL_KEY!r}): the export "
            f"predates sealed manifests or its model was replaced, so manifest.json cannot be checked; "
            f"{_REEXPORT}"
        )
    try:
        record = json.loads(seal)
        sealed = dict(record["sections"])
        ok = record.get("format") == SEAL_FORMAT and all(isinstance(v, str) for v in sealed.values())
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise ManifestError(
            f"{where}: the manifest seal in {onnx_name!r} is malformed or of an unknown format (want "
            f"{SEAL_FORMAT!r}); {_REEXPORT}"
        )
    now = seal_digests(manifest)
    changed = sorted(k for k in sealed.keys() & now.keys() if not hmac.compare_digest(sealed[k], now[k]))
    added, removed = sorted(now.keys() - sealed.keys()), sorted(sealed.keys() - now.keys())
    if changed or added or removed:
        parts = [
            f"{'section' if len(v) == 1 else 'sections'} {', '.join(repr(k) for k in v)} {what}"
            for v, what in ((changed, "changed"), (added, "added"), (removed, "removed"))
            if v
        ]
        swapped = (
            f"; 'created' differs too: {onnx_name!r} and manifest.json come from different exports"
            if "created" in changed
            else ""
        )
        raise ManifestError(
            f"{where}: manifest.json {'; '.join(parts)} after export (the seal in {onnx_name!r} binds "
            f"the manifest as exported{swapped}): restore the exported manifest.json or "
            + _REEXPORT
            + "; to change guard settings, pass them to PolicyRuntime / o2o serve instead of editing "
            "the manifest"
        )
    return sealed


def read_signing_key(path: str | os.PathLike) -> bytes:
    """A signing key from a file (surrounding whitespace dropped), refused when missing or too short to be a secret."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as e:
        raise ManifestError(f"signing key file {str(path)!r} cannot be read ({e.strerror or e})") from None
    return _check_key(key, f"signing key file {str(path)!r}")


def _check_key(key: bytes | str, where: str) -> bytes:
    key = key.encode() if isinstance(key, str) else bytes(key)
    if len(key) < MIN_KEY_BYTES:
        raise ManifestError(
            f"{where}: the key has {len(key)} bytes, fewer than {MIN_KEY_BYTES}: too short to be a "
            "secret (make one with: openssl rand -hex 32 > o2o-signing.key)"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (tells which key signed; reveals nothing that helps forge)."""
    return hmac.new(key, b"o2o signing key id", hashlib.sha256).hexdigest()[:16]


def _signature_message(sealed: Mapping[str, str], onnx_sha256: str) -> bytes:
    return b"o2o-export-signature/1\n" + canonical_json({"onnx_sha256": onnx_sha256, "sections": dict(sealed)})


def sign(sealed: Mapping[str, str], onnx_sha256: str, key: bytes | str) -> dict[str, str]:
    """The ``signature`` section: HMAC-SHA256 under ``key`` over the sealed digests and the ONNX file's SHA-256."""
    key = _check_key(key, "signing key")
    return {
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": key_id(key),
        "value": hmac.new(key, _signature_message(sealed, onnx_sha256), hashlib.sha256).hexdigest(),
    }


def check_signature(
    manifest: Mapping[str, Any], sealed: Mapping[str, str], onnx_sha256: str, key: bytes | str, where: str
) -> None:
    """Refuse an export that is not signed, or not signed with ``key``, over exactly this seal and model."""
    key = _check_key(key, f"{where}: signing key")
    sig = manifest.get(SIGNATURE_SECTION)
    if not isinstance(sig, Mapping) or not sig.get("value"):
        raise ManifestError(
            f"{where}: the export is not signed and this runtime requires a signature (a signing key "
            "was given): use an export made with export.signing_key_file set to this deployment's "
            "key"
        )
    if sig.get("algorithm") != SIGNATURE_ALGORITHM:
        raise ManifestError(f"{where}: signature algorithm {sig.get('algorithm')!r} is not {SIGNATURE_ALGORITHM!r}")
    want = hmac.new(key, _signature_message(sealed, onnx_sha256), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(str(sig["value"]), want):
        other = sig.get("key_id") not in (None, key_id(key))
        raise ManifestError(
            f"{where}: the signature does not match: "
            + (
                f"it was signed with another key (key id {sig.get('key_id')}, this key's is {key_id(key)})"
                if other
                else "the export changed after it was signed, or the signature was forged"
            )
            + "; use an export signed with this deployment's key"
        )


def check_manifest(manifest: Any, where: str) -> None:
    """Structure checks a consumer relies on: format, sections, dims, layout and bounds agree."""
    if not isinstance(manifest, Mapping):
        raise ManifestError(f"{where}: manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{where}: not an o2o export manifest (format {manifest.get('format')!r}, want {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        old = isinstance(manifest.get("format_version"), int) and manifest["format_version"] < FORMAT_VERSION
        raise ManifestError(
            f"{where}: manifest format_version {manifest.get('format_version')!r} is not supported "
            f"(this o2o reads {FORMAT_VERSION})"
            + (
                f": exports before format 2 carry no seal binding manifest.json to the model; {_REEXPORT}"
                if old
                else ""
            )
        )
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
            raise ManifestError(
                f"{where}: observation.layout[{i}] ({f.get('key')!r}) spans "
                f"[{f.get('start')}, {f.get('stop')}), expected [{pos}, {pos + size}) for shape "
                f"{f.get('shape')}"
            )
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
        raise ManifestError(
            f"export {str(directory)!r}: no {MANIFEST_NAME} (not an o2o export folder; create one with "
            "`o2o export ckpt=...`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"export {str(directory)!r}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    check_manifest(manifest, f"export {str(directory)!r}")
    if verify:
        verify_files(directory, manifest)
    return manifest
