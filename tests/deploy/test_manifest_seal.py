"""The manifest is sealed into the ONNX model: any edit after export is refused by the runtime and
`o2o serve`, by section; an optional HMAC signature ties an export to a deployment's key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from o2o.deploy.export import write_onnx_metadata
from o2o.deploy.manifest import SEAL_KEY, ManifestError, file_entry, key_id, write_manifest
from o2o.deploy.runtime import PolicyRuntime
from o2o.pipeline.config import load_config
from o2o.pipeline.stages.export import export


def edit(folder: Path, change) -> dict:
    """Edit manifest.json in place the way a person with a text editor would (hashes of the files untouched)."""
    m = json.loads((folder / "manifest.json").read_text())
    change(m)
    write_manifest(folder, m)
    return m


def _set(path: str, value):
    def change(m):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[p]
        node[last] = value

    return change


def _delete(path: str):
    def change(m):
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[p]
        del node[last]

    return change


def _swap_layout(m):  # same sizes, so the layout still checks out structurally: only the seal can tell
    lay = m["observation"]["layout"]
    lay[1]["key"], lay[2]["key"] = lay[2]["key"], lay[1]["key"]


EDITS = {
    "safe_action": (_set("runtime.safe_action", [1, 1]), "section 'runtime' changed"),
    "rewritten_unchanged": (_set("runtime.max_delta", None), None),  # already None: same content, loads
    "bounds_widened": (lambda m: m["action"].update(low=[-50.0, -50.0], high=[50.0, 50.0]), "section 'action' changed"),
    "reference_entry_deleted": (_set("parity.reference_file", None), "section 'parity' changed"),
    "reference_hash_deleted": (lambda m: m["files"].pop("reference.npz"), "section 'files' changed"),
    "layout_swapped": (_swap_layout, "section 'observation' changed"),
    "control_rate": (_set("control.frequency_hz", 200.0), "section 'control' changed"),
    "section_added": (_set("extra", {"note": "hi"}), "section 'extra' added"),
    "notes_removed": (_delete("notes"), "section 'notes' removed"),
    "closed_loop_result": (
        _set("evaluation.closed_loop", {"runtime": {"success_rate": 1.0}}),
        "section 'evaluation' changed",
    ),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_a_manifest_edited_after_export_is_refused_by_section(export_copy, name):
    change, message = EDITS[name]
    edit(export_copy, change)
    if message is None:  # rewriting the same content is not a change
        PolicyRuntime(export_copy)
        return
    with pytest.raises(ManifestError, match=rf"manifest.json {message} after export \(the seal in 'policy.onnx'"):
        PolicyRuntime(export_copy)
    with pytest.raises(ManifestError, match="restore the exported manifest.json or export the checkpoint again"):
        PolicyRuntime(export_copy, verify=False)  # the seal is checked even without file hashing


def test_every_changed_section_is_named(export_copy):
    edit(export_copy, lambda m: (_set("runtime.safe_action", [1, 1])(m), _delete("notes")(m)))
    with pytest.raises(ManifestError, match=r"section 'runtime' changed; section 'notes' removed after export"):
        PolicyRuntime(export_copy)


def test_o2o_serve_refuses_an_edited_manifest(export_copy, torch_blocker):
    edit(export_copy, _set("runtime.safe_action", [1, 1]))
    proc = subprocess.run(
        [sys.executable, "-m", "o2o.pipeline.cli", "serve", f"export_dir={export_copy}", "port=0"],
        env=torch_blocker,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and not proc.stdout.startswith("serving"), proc.stdout
    assert "manifest.json section 'runtime' changed after export" in proc.stderr, proc.stderr


def test_the_seal_is_in_the_onnx_model_and_covers_every_section(maze_export):
    out = Path(maze_export.out_dir)
    m = json.loads((out / "manifest.json").read_text())
    props = {p.key: p.value for p in onnx.load(str(out / "policy.onnx")).metadata_props}
    seal = json.loads(props[SEAL_KEY])
    assert seal["format"] == "o2o-manifest-seal/1" and seal["hash"] == "sha256"
    assert set(seal["sections"]) == set(m) and "closed_loop" in m["evaluation"]  # sealed after the check
    assert m["format_version"] == 2 and "signature" not in m
    assert m["files"]["policy.onnx"] == file_entry(out / "policy.onnx")  # the hash covers the seal


def _strip_seal(path: Path) -> None:
    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != SEAL_KEY]
    del proto.metadata_props[:]
    for k, v in kept:
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def test_an_export_without_a_seal_is_refused_with_what_to_do(export_copy):
    edit(export_copy, _set("format_version", 1))
    with pytest.raises(
        ManifestError,
        match=r"format_version 1 is not supported \(this o2o reads 2\): exports before "
        r"format 2 carry no seal .* export the checkpoint again",
    ):
        PolicyRuntime(export_copy)
    # A format-2 manifest whose model carries no seal (an older model put back, hashes updated).
    _strip_seal(export_copy / "policy.onnx")
    edit(
        export_copy,
        lambda m: (
            m.update(format_version=2),
            m["files"].update({"policy.onnx": file_entry(export_copy / "policy.onnx")}),
        ),
    )
    with pytest.raises(
        ManifestError,
        match=r"'policy.onnx' carries no manifest seal \(metadata 'o2o.manifest_seal'\)"
        r".*export the checkpoint again",
    ):
        PolicyRuntime(export_copy)


def test_a_model_swapped_in_from_another_export_is_refused(export_copy, sqrt_export):
    """Another export's sealed model, with the manifest's hash of it updated: its seal is of another manifest."""
    shutil.copy(sqrt_export / "policy.onnx", export_copy / "policy.onnx")
    edit(export_copy, lambda m: m["files"].update({"policy.onnx": file_entry(export_copy / "policy.onnx")}))
    with pytest.raises(
        ManifestError,
        match=r"sections .*'observation', 'onnx', 'parity', 'policy'.* changed after "
        r"export .*'created' differs too: 'policy.onnx' and manifest.json come "
        r"from different exports",
    ):
        PolicyRuntime(export_copy)


def test_a_forged_seal_value_is_refused(export_copy):
    write_onnx_metadata(export_copy / "policy.onnx", {SEAL_KEY: "{not json"})
    edit(export_copy, lambda m: m["files"].update({"policy.onnx": file_entry(export_copy / "policy.onnx")}))
    with pytest.raises(ManifestError, match="manifest seal in 'policy.onnx' is malformed"):
        PolicyRuntime(export_copy)


# ---------------------------------------------------------------------- signing
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    out = {}
    for name, text in (
        ("ours", "3f1c0a9e5b7d2c4e6a8b0d1f3e5c7a9b\n"),
        ("theirs", "0123456789abcdef0123456789abcdef"),
        ("short", "secret\n"),
    ):
        out[name] = root / f"{name}.key"
        out[name].write_text(text)
    return out


@pytest.fixture(scope="module")
def signed_export(bc_run, keys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signed") / "export"
    res = export(
        load_config(
            "export",
            [
                f"ckpt={bc_run.last_checkpoint}",
                f"out={out}",
                "parity.observations=128",
                "closed_loop.episodes=2",
                f"signing_key_file={keys['ours']}",
            ],
        )
    )
    assert any("signed with the key in" in n for n in res.notes)
    return out


def test_a_signed_export_loads_with_its_key_and_is_refused_with_another(signed_export, keys):
    m = json.loads((signed_export / "manifest.json").read_text())
    key = keys["ours"].read_bytes().strip()
    assert m["signature"]["algorithm"] == "hmac-sha256" and m["signature"]["key_id"] == key_id(key)
    rt = PolicyRuntime(signed_export, key_file=keys["ours"])
    assert rt.signed and rt.signature_checked
    assert PolicyRuntime(signed_export, signing_key=key.decode()).signature_checked  # the key as text
    with pytest.raises(ManifestError, match=rf"signed with another key \(key id {key_id(key)}, this key's is "):
        PolicyRuntime(signed_export, key_file=keys["theirs"])
    # Without a key the signature is not checked (documented): it loads, and says so.
    plain = PolicyRuntime(signed_export)
    assert plain.signed and not plain.signature_checked


def test_a_runtime_with_a_key_refuses_an_unsigned_or_altered_export(signed_export, maze_export, keys, tmp_path):
    with pytest.raises(ManifestError, match="the export is not signed and this runtime requires a signature"):
        PolicyRuntime(maze_export.out_dir, key_file=keys["ours"])
    stripped = tmp_path / "stripped"
    shutil.copytree(signed_export, stripped)
    edit(stripped, _delete("signature"))  # the signature is not sealed: removing it makes an unsigned export
    PolicyRuntime(stripped)
    with pytest.raises(ManifestError, match="the export is not signed"):
        PolicyRuntime(stripped, key_file=keys["ours"])
    forged = tmp_path / "forged"
    shutil.copytree(signed_export, forged)
    edit(forged, lambda m: m["signature"].update(value="0" * 64))
    with pytest.raises(ManifestError, match="the signature does not match: the export changed after it was signed"):
        PolicyRuntime(forged, key_file=keys["ours"])


def test_keys_too_short_to_be_secrets_are_refused(signed_export, bc_run, keys, tmp_path):
    with pytest.raises(ManifestError, match=r"key has 6 bytes, fewer than 16: too short to be a secret"):
        PolicyRuntime(signed_export, key_file=keys["short"])
    with pytest.raises(ManifestError, match=r"signing key file .*missing.key' cannot be read"):
        PolicyRuntime(signed_export, key_file=tmp_path / "missing.key")
    with pytest.raises(ManifestError, match="too short to be a secret"):
        export(
            load_config(
                "export",
                [
                    f"ckpt={bc_run.last_checkpoint}",
                    f"out={tmp_path / 'out'}",
                    "closed_loop.episodes=0",
                    f"signing_key_file={keys['short']}",
                ],
            )
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="give signing_key or key_file, not both"):
        PolicyRuntime(signed_export, signing_key="x" * 16, key_file=keys["ours"])


def test_o2o_serve_checks_the_signature_with_key_file(signed_export, keys, torch_blocker):
    cmd = [sys.executable, "-m", "o2o.pipeline.cli", "serve", f"export_dir={signed_export}", "port=0"]
    bad = subprocess.run(
        [*cmd, f"key_file={keys['theirs']}"], env=torch_blocker, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "signed with another key" in bad.stderr, bad.stderr
    good = subprocess.Popen(
        [*cmd, f"key_file={keys['ours']}"], env=torch_blocker, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = good.stdout.readline()
        assert line.startswith("serving") and "manifest seal checked, signature checked" in line, (
            line,
            good.stderr.read() if good.poll() is not None else "",
        )
    finally:
        good.terminate()
        good.wait(timeout=30)
