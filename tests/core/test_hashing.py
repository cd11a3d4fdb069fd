"""o2o.core.hashing: SHA-256 of files and folders, and the recorded-hash check."""

from __future__ import annotations

import hashlib

from o2o.core import hashing
from o2o.core.hashing import file_unchanged, sha256_file, sha256_path


def test_a_file_hashes_to_hashlib_sha256_of_its_bytes_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "BLOCK", 7)  # several blocks, the last one short
    data = bytes(range(256)) * 3
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    assert sha256_file(f) == sha256_file(str(f)) == hashlib.sha256(data).hexdigest()
    assert sha256_path(f) == sha256_file(f)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_a_folder_hashes_every_file_by_relative_path_and_bytes(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b").write_bytes(b"2")
    (tmp_path / "d" / "sub" / "a").write_bytes(b"1")
    want = hashlib.sha256(b"b\x002" + b"sub/a\x001").hexdigest()  # sorted by path
    assert sha256_path(tmp_path / "d") == want
    (tmp_path / "d" / "b").rename(tmp_path / "d" / "c")  # same bytes, another name
    assert sha256_path(tmp_path / "d") != want


def test_file_unchanged_is_false_for_a_missing_or_changed_file(tmp_path):
    f = tmp_path / "ckpt"
    f.write_bytes(b"weights")
    digest = sha256_file(f)
    assert file_unchanged(f, digest)
    f.write_bytes(b"weights!")
    assert not file_unchanged(f, digest)
    f.unlink()
    assert not file_unchanged(f, digest)


def test_the_old_import_paths_give_the_same_functions():
    from o2o.deploy import manifest

    assert manifest.sha256_file is sha256_file and manifest.file_unchanged is file_unchanged
