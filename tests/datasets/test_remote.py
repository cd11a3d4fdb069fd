"""Reading a store through fsspec URLs: a copy in fsspec's in-memory filesystem, and ``file://``.

A store is built locally with ``store_writer.py``'s episodes, copied file by file into
``memory://`` (``index.json`` last, as docs/dataset.md asks of a sync), and read back by URL:
everything a reader does must give exactly what the local store gives. Writing to a URL
is refused before anything is touched.
"""

from __future__ import annotations

import uuid
from dataclasses import fields
from pathlib import Path

import fsspec
import numpy as np
import pytest

from o2o.datasets import EpisodeStore, StoreLockedError
from o2o.datasets.inspect import dataset_info, verify_dataset


@pytest.fixture
def memory():
    """``(fs, url)``: fsspec's in-memory filesystem and a fresh store URL in it, removed afterwards."""
    fs = fsspec.filesystem("memory")
    top = f"o2o-test-{uuid.uuid4().hex}"
    yield fs, f"memory://{top}/s.zarr"
    if fs.exists(f"/{top}"):
        fs.rm(f"/{top}", recursive=True)
    assert not fs.exists(f"/{top}")


def build(store_writer, path: Path, count: int) -> Path:
    """A closed local store of ``store_writer.make_episode(i)`` for the first ``count`` i."""
    with EpisodeStore.open(path, mode="a") if path.exists() else store_writer.create_store(path) as w:
        for i in range(w.num_episodes, count):
            w.append(store_writer.make_episode(i))
    return path


def upload(fs, local: Path, url: str) -> None:
    """Copy every file of ``local`` to ``url``, the commit (``index.json``) last."""
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != "index.json")
    for p in [*files, local / "index.json"]:
        fs.put_file(str(p), f"{url}/{p.relative_to(local).as_posix()}")


def contents(fs, url: str) -> dict[str, bytes]:
    return {p: fs.cat_file(p) for p in fs.find(url)}


def assert_same_transitions(a, b) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):
            assert list(x) == list(y), f.name
            for k in x:
                assert x[k].dtype == y[k].dtype, (f.name, k)
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{f.name}/{k}")
        else:
            assert x.dtype == y.dtype, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)


def assert_reads_the_same(local: EpisodeStore, other: EpisodeStore, store_writer) -> None:
    """Everything a reader does gives the same answer on ``other`` as on ``local``."""
    assert other.version == local.version and other.num_steps == local.num_steps
    assert other.provenance_table == local.provenance_table and other.env == local.env
    n = local.num_episodes
    for indices in (None, np.arange(n - 1, -1, -2)):
        for flatten in (True, False):
            assert_same_transitions(
                local.load_transitions(indices, flatten=flatten), other.load_transitions(indices, flatten=flatten)
            )
    want, got = local.episodes_table(), other.episodes_table()
    assert list(got) == list(want)
    for k in want:
        assert got[k].tolist() == want[k].tolist(), k
    for kw in (
        {"sources": "human"},
        {"sources": ["scripted", "online"], "policy_ids": "writer-1"},
        {"success": True},
        {"episodes": [n - 1, 0]},
        {"version": n - 1},
        {"version": local.version},
    ):
        assert other.select(**kw).tolist() == local.select(**kw).tolist(), kw
    assert other.normalization_stats().to_dict() == local.normalization_stats().to_dict()
    for i, ep in enumerate(other.iter_episodes()):
        assert store_writer.checksum(ep) == store_writer.checksum(store_writer.make_episode(i)), i
        assert store_writer.checksum(ep) == store_writer.checksum(local.episode(i)), i
        assert (ep.index, ep.provenance) == (i, local.episode(i).provenance)
    assert i == n - 1


def test_memory_url_reads_exactly_like_the_local_store(store_writer, tmp_path, memory):
    fs, url = memory
    path = build(store_writer, tmp_path / "s.zarr", 4)
    upload(fs, path, url)
    with EpisodeStore.open(path) as local, EpisodeStore.open(url) as remote:
        assert remote.path == url and remote.root is None
        assert remote.num_episodes == 4
        assert_reads_the_same(local, remote, store_writer)
        info, remote_info = dataset_info(local), dataset_info(remote)
    assert remote_info.pop("path") == url and info.pop("path") == str(path)
    for d in (info, remote_info):  # how long the content check took differs
        assert d["integrity"].pop("seconds") >= 0
    assert remote_info == info  # size on disk included: the copy holds the same bytes
    assert verify_dataset(url) == verify_dataset(path) == ([], [])


def test_remote_reader_sees_a_synced_append_after_refresh(store_writer, tmp_path, memory):
    fs, url = memory
    path = build(store_writer, tmp_path / "s.zarr", 3)
    upload(fs, path, url)
    remote = EpisodeStore.open(url)
    old = remote.version
    upload(fs, build(store_writer, path, 5), url)
    assert remote.version == old and len(remote.load_transitions()) == old.steps  # nothing until refresh
    with EpisodeStore.open(path) as local:
        assert remote.refresh() == local.version and remote.num_episodes == 5
        assert remote.select(version=old).tolist() == [0, 1, 2]
        assert_reads_the_same(local, remote, store_writer)
    assert verify_dataset(url) == ([], [])


def test_missing_remote_store_names_the_url(memory):
    fs, url = memory
    with pytest.raises(FileNotFoundError, match="does not exist or is not an o2o store") as err:
        EpisodeStore.open(url)
    assert url in str(err.value)
    problems, _ = verify_dataset(url)
    assert len(problems) == 1 and problems[0].startswith("no o2o dataset at") and url in problems[0]
    assert not fs.exists(url)


@pytest.mark.parametrize("how", ["open-a", "create", "create-new"])
def test_writing_to_a_url_is_refused_before_anything_is_touched(store_writer, tmp_path, memory, monkeypatch, how):
    fs, url = memory
    if how != "create-new":
        upload(fs, build(store_writer, tmp_path / "s.zarr", 2), url)
    before = contents(fs, url) if fs.exists(url) else None
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a URL taken for a relative path would create "memory:/..." here
    with pytest.raises(ValueError) as err:
        if how == "open-a":
            EpisodeStore.open(url, mode="a")
        else:
            store_writer.create_store(url)
    msg = str(err.value)
    assert url in msg and "local filesystem" in msg and "flock" in msg and "copy or sync" in msg, msg
    assert (contents(fs, url) if fs.exists(url) else None) == before
    assert list(work.iterdir()) == []


def test_file_url_reads_like_the_plain_path(store_writer, tmp_path):
    path = build(store_writer, tmp_path / "s.zarr", 3)
    file_url = path.absolute().as_uri()
    assert file_url.startswith("file:///")
    with EpisodeStore.open(path) as local, EpisodeStore.open(file_url) as by_url:
        assert by_url.path == file_url and by_url.root == path.absolute()
        assert_reads_the_same(local, by_url, store_writer)
        info, url_info = dataset_info(local), dataset_info(by_url)
    assert url_info.pop("path") == file_url and info.pop("path") == str(path)
    for d in (info, url_info):  # how long the content check took differs
        assert d["integrity"].pop("seconds") >= 0
    assert url_info == info
    assert verify_dataset(file_url) == ([], [])
    # A file:// URL is a local store: it can be written, and its writer holds the same lock.
    with EpisodeStore.open(file_url, mode="a") as w:
        with pytest.raises(StoreLockedError):
            EpisodeStore.open(path, mode="a")
        w.append(store_writer.make_episode(3))
    with EpisodeStore.open(path) as local:
        assert local.num_episodes == 4
