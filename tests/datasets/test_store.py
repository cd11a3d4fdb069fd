"""The episode store against an in-memory model, and its reading API.

The property test drives random sequences of appends (one by one and in batches, flat and
dict observations, every provenance source, with and without seeds/success) and reopens,
and after every step compares the writer and a freshly opened reader with a plain list of
the episodes appended so far: all rows through ``load_transitions`` (whole and a
non-contiguous selection), all records through ``episodes_table`` and ``select``, the
episodes just appended through ``episode(i)``; at the end every episode through
``iter_episodes`` of a reader that was open all along. (``episode(i)`` of every episode
after every step would triple the run time; appended rows never change, and the bulk
comparison would see it if they did.)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from o2o.datasets import SOURCES, DatasetVersion, Episode, EpisodeRecorder, EpisodeStore, Schema
from o2o.datasets.inspect import dataset_info, verify_dataset

SCHEMAS = {
    "flat": Schema.from_spaces(gym.spaces.Box(-5, 5, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32)),
    "dict": Schema.from_spaces(
        gym.spaces.Dict(
            {  # gymnasium orders the keys: joint, target, tick
                "joint": gym.spaces.Box(-5, 5, (3,), np.float32),
                "target": gym.spaces.Box(-5, 5, (2, 2), np.float64),
                "tick": gym.spaces.Box(0, 1000, (1,), np.int32),
            }
        ),
        gym.spaces.Box(-1, 1, (2,), np.float32),
    ),
}
FIELDS = ("actions", "rewards", "terminals", "timeouts", "interventions")


# -- generating episodes and their expected stored form -------------------------------------------


def make_episode(
    kind: str,
    T: int,
    value_seed: int,
    *,
    source="scripted",
    policy_id="pA",
    policy_version=None,
    seed=None,
    success=None,
    ending="none",
    interventions=False,
    wide_floats=False,
    start_time=1.7e9,
) -> Episode:
    """An episode of ``kind``'s schema; ``wide_floats`` hands float64 to float32 keys (a same-kind cast)."""
    rng = np.random.default_rng(value_seed)
    f32 = np.float64 if wide_floats else np.float32

    def obs(n):
        if kind == "flat":
            return rng.normal(size=(*n, 3)).astype(f32)
        return {
            "joint": rng.normal(size=(*n, 3)).astype(f32),
            "target": rng.normal(size=(*n, 2, 2)),
            "tick": rng.integers(0, 1000, (*n, 1)).astype(np.int32),
        }

    flags = {"terminals": np.zeros(T, bool), "timeouts": np.zeros(T, bool)}
    if ending != "none":
        flags[ending][-1] = True
    prov = {"source": source, "policy_id": policy_id}
    if policy_version is not None:
        prov["policy_version"] = policy_version
    return Episode(
        observations=obs((T,)),
        actions=rng.uniform(-1, 1, (T, 2)).astype(f32),
        rewards=rng.normal(size=T).astype(f32),
        final_observation=obs(()),
        provenance=prov,
        interventions=rng.random(T) < 0.3 if interventions else None,
        seed=seed,
        success=success,
        start_time=start_time,
        end_time=start_time + 0.05 * T,
        **flags,
    )


def expected(kind: str, ep: Episode) -> dict:
    """What the store must hold for ``ep``: arrays in the stored dtypes, and the record."""
    schema = SCHEMAS[kind]
    as_dict = (lambda o: {"state": o}) if kind == "flat" else dict
    obs = {k: np.asarray(v, schema.obs[k].dtype) for k, v in as_dict(ep.observations).items()}
    final = {k: np.asarray(v, schema.obs[k].dtype) for k, v in as_dict(ep.final_observation).items()}
    T = len(ep)
    rewards = np.asarray(ep.rewards, np.float32)
    return {
        "obs": obs,
        "final": final,
        "next": {k: np.concatenate([v[1:], final[k][None]]) for k, v in obs.items()},
        "actions": np.asarray(ep.actions, np.float32),
        "rewards": rewards,
        "terminals": ep.terminals,
        "timeouts": ep.timeouts,
        "interventions": np.zeros(T, bool) if ep.interventions is None else ep.interventions,
        "provenance": {
            "source": ep.provenance["source"],
            "policy_id": ep.provenance["policy_id"],
            "policy_version": ep.provenance.get("policy_version", "1"),
            "params": {},
        },
        "seed": ep.seed,
        "success": ep.success,
        "times": (ep.start_time, ep.end_time),
        "returns": float(np.sum(rewards, dtype=np.float64)),
    }


@st.composite
def episodes(draw, kind: str) -> Episode:
    return make_episode(
        kind,
        draw(st.integers(1, 50)),
        draw(st.integers(0, 2**32 - 1)),
        source=draw(st.sampled_from(SOURCES)),
        policy_id=draw(st.sampled_from(["pA", "pB"])),
        policy_version=draw(st.sampled_from([None, "2"])),
        seed=draw(st.none() | st.integers(0, 2**63 - 1)),
        success=draw(st.none() | st.booleans()),
        ending=draw(st.sampled_from(["none", "terminals", "timeouts"])),
        interventions=draw(st.booleans()),
        wide_floats=draw(st.booleans()),
        start_time=draw(st.floats(0, 2e9)),
    )


def operations(kind: str):
    return st.lists(
        st.one_of(
            st.tuples(st.just("append"), episodes(kind)),
            st.tuples(st.just("append_many"), st.lists(episodes(kind), max_size=3)),
            st.tuples(st.just("reopen"), st.none()),
        ),
        min_size=1,
        max_size=4,
    )


# -- comparing a store with the model ------------------------------------------------------------


def flatten(kind: str, obs: dict) -> np.ndarray:
    if kind == "flat":
        return obs["state"]
    return np.concatenate([v.reshape(len(v), -1).astype(np.float32) for v in obs.values()], axis=1)


def assert_episode_equal(kind: str, got: Episode, want: dict, i: int) -> None:
    obs = {"state": got.observations} if kind == "flat" else got.observations
    final = {"state": got.final_observation} if kind == "flat" else got.final_observation
    assert list(obs) == list(want["obs"]) and list(final) == list(want["final"])
    for k in want["obs"]:
        for have, exp in ((obs[k], want["obs"][k]), (final[k], want["final"][k])):
            assert have.dtype == exp.dtype, (i, k)
            np.testing.assert_array_equal(have, exp, err_msg=f"episode {i} observation {k}")
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(got, f), want[f], err_msg=f"episode {i} {f}")
        assert getattr(got, f).dtype == want[f].dtype
    assert got.index == i
    assert got.provenance == want["provenance"]
    assert (got.seed, got.success, (got.start_time, got.end_time)) == (want["seed"], want["success"], want["times"])
    assert got.episode_return == pytest.approx(want["returns"], rel=1e-12, abs=1e-12)


def assert_transitions(kind: str, store: EpisodeStore, model: list[dict], indices=None, flat_too=False) -> None:
    idx = np.arange(len(model)) if indices is None else np.asarray(indices, np.int64)
    tr = store.load_transitions(None if indices is None else idx, flatten=False)
    chosen = [model[i] for i in idx]
    lengths = [len(m["actions"]) for m in chosen]
    assert len(tr) == sum(lengths)
    np.testing.assert_array_equal(tr.episode_index, np.repeat(idx, lengths))
    if not chosen:
        return
    cat = lambda key, sub=None: np.concatenate([m[key][sub] if sub else m[key] for m in chosen])  # noqa: E731
    for k in chosen[0]["obs"]:
        np.testing.assert_array_equal(tr.observations[k], cat("obs", k))
        np.testing.assert_array_equal(tr.next_observations[k], cat("next", k))  # last next = final observation
    for f in ("actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(tr, f), cat(f))
    if flat_too:
        flat = store.load_transitions(None if indices is None else idx)
        np.testing.assert_array_equal(flat.observations, flatten(kind, {k: cat("obs", k) for k in chosen[0]["obs"]}))
        np.testing.assert_array_equal(
            flat.next_observations, flatten(kind, {k: cat("next", k) for k in chosen[0]["obs"]})
        )


def assert_table_and_selection(store: EpisodeStore, model: list[dict]) -> None:
    n = len(model)
    t = store.episodes_table()
    lengths = [len(m["actions"]) for m in model]
    assert t["index"].tolist() == list(range(n))
    assert t["length"].tolist() == lengths
    assert t["start"].tolist() == np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()[:n]
    assert t["returns"].tolist() == [m["returns"] for m in model]
    assert t["success"].tolist() == [-1 if m["success"] is None else int(m["success"]) for m in model]
    assert t["seed"].tolist() == [m["seed"] for m in model]  # None: no seed
    assert list(zip(t["start_time"].tolist(), t["end_time"].tolist())) == [m["times"] for m in model]
    assert t["terminated"].tolist() == [bool(m["terminals"][-1]) for m in model]
    assert t["truncated"].tolist() == [bool(m["timeouts"][-1]) for m in model]
    assert t["interventions"].tolist() == [int(m["interventions"].sum()) for m in model]
    for field in ("source", "policy_id", "policy_version"):
        assert t[field].tolist() == [m["provenance"][field] for m in model]
    for src in SOURCES:
        assert store.select(sources=src).tolist() == [
            i for i, m in enumerate(model) if m["provenance"]["source"] == src
        ]
    pair = ["human", "online"]
    assert store.select(sources=pair, policy_ids="pB").tolist() == [
        i for i, m in enumerate(model) if m["provenance"]["source"] in pair and m["provenance"]["policy_id"] == "pB"
    ]
    assert store.select(success=True).tolist() == [i for i, m in enumerate(model) if m["success"] is True]
    some = list(range(n - 1, -1, -2))
    assert store.select(episodes=some).tolist() == sorted(some)
    assert store.select(episodes=slice(1, None)).tolist() == list(range(1, n))


@pytest.mark.slow  # over 10 s: outside the fast tier (pytest -m 'not slow'), in the full suite
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_appends_and_reads_match_model(tmp_path_factory, data):
    kind = data.draw(st.sampled_from(["flat", "dict"]), label="schema")
    ops = data.draw(operations(kind), label="operations")
    root = tmp_path_factory.mktemp("model")
    path = root / "s.zarr"
    model: list[dict] = []
    versions: list[DatasetVersion] = []
    writer = EpisodeStore.create(path, SCHEMAS[kind])
    reader = EpisodeStore.open(path)  # long-lived: sees appends through refresh()
    try:
        versions.append(writer.version)
        assert versions[0] == DatasetVersion(0, 0, "0" * 32)
        for op, arg in ops:
            new = [] if op == "reopen" else [arg] if op == "append" else arg
            if op == "reopen":
                writer.close()
                writer = EpisodeStore.open(path, mode="a")
            else:
                got = [writer.append(arg)] if op == "append" else writer.append_many(arg)
                assert got == list(range(len(model), len(model) + len(new)))
            model += [expected(kind, ep) for ep in new]
            v = writer.version
            # the version changes iff content was appended
            assert (v != versions[-1]) == bool(new) and (v.fingerprint != versions[-1].fingerprint) == bool(new)
            assert (v.episodes, v.steps) == (len(model), sum(len(m["actions"]) for m in model))
            assert reader.refresh() == v
            fresh = EpisodeStore.open(path)
            assert fresh.version == v and fresh.num_episodes == len(model)
            for store in (writer, fresh):
                assert_transitions(kind, store, model)
                for i in range(len(model) - len(new), len(model)):
                    assert_episode_equal(kind, store.episode(i), model[i], i)
            assert_transitions(kind, fresh, model, indices=list(range(len(model) - 1, -1, -2)), flat_too=True)
            assert_table_and_selection(fresh, model)
            for old in versions:  # an earlier version still names exactly its episodes
                assert fresh.select(version=old).tolist() == list(range(old.episodes))
            versions.append(v)
        for i, ep in enumerate(reader.iter_episodes()):  # all of them, through the refreshed reader
            assert_episode_equal(kind, ep, model[i], i)
        writer.close()
        assert verify_dataset(path) == ([], [])
    finally:
        writer.close()
        shutil.rmtree(root)


# -- the reading API on a small fixed store ---------------------------------------------------------


@pytest.fixture
def filled(tmp_path):
    """A closed dict-schema store of 6 episodes from three sources: (path, model, version after each commit)."""
    path = tmp_path / "s.zarr"
    eps = [
        make_episode(
            "dict",
            4 + 3 * i,
            i,
            source=SOURCES[i % 3],
            policy_id="pA" if i < 4 else "pB",
            success=None if i == 5 else i % 2 == 0,
            ending=("terminals", "timeouts", "none")[i % 3],
            interventions=True,
            start_time=1.7e9 + i,
        )
        for i in range(6)
    ]
    with EpisodeStore.create(path, SCHEMAS["dict"], env={"id": "Reach-v0"}) as w:
        w.append_many(eps[:4])
        versions = [w.version]
        for ep in eps[4:]:
            w.append(ep)
            versions.append(w.version)
    return path, [expected("dict", e) for e in eps], versions


def test_load_transitions_on_device_gives_torch_tensors(filled):
    path, model, _ = filled
    with EpisodeStore.open(path) as r:
        ref = r.load_transitions()
        tr = r.load_transitions(device="cpu")
        nested = r.load_transitions(flatten=False, device="cpu")
    for name in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts", "episode_index"):
        t = getattr(tr, name)
        assert isinstance(t, torch.Tensor) and t.device.type == "cpu", name
        np.testing.assert_array_equal(t.numpy(), getattr(ref, name))
    assert tr.observations.dtype == torch.float32 and tr.terminals.dtype == torch.bool
    assert tr.observations.shape == (sum(len(m["actions"]) for m in model), 3 + 4 + 1)
    assert set(nested.observations) == {"joint", "target", "tick"}
    assert nested.observations["target"].dtype == torch.float64 and nested.observations["tick"].dtype == torch.int32
    assert all(isinstance(v, torch.Tensor) for v in nested.next_observations.values())


@pytest.mark.parametrize("sources", [None, ["human", "scripted"]])
def test_normalization_stats_equal_numpy(filled, sources):
    path, model, _ = filled
    with EpisodeStore.open(path) as r:
        idx = r.select(sources=sources)
        stats = r.normalization_stats(idx)
    chosen = [model[i] for i in idx]
    obs = np.concatenate([flatten("dict", m["obs"]) for m in chosen]).astype(np.float64)
    act = np.concatenate([m["actions"] for m in chosen]).astype(np.float64)
    rew = np.concatenate([m["rewards"] for m in chosen]).astype(np.float64)
    np.testing.assert_allclose(stats.obs_mean, obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.obs_std, np.maximum(obs.std(0), 1e-3), rtol=1e-6)
    np.testing.assert_allclose(stats.action_mean, act.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.action_std, act.std(0), rtol=1e-6)
    assert stats.reward_mean == pytest.approx(rew.mean(), rel=1e-9)
    assert stats.reward_std == pytest.approx(rew.std(), rel=1e-9)
    assert (stats.reward_min, stats.reward_max, stats.count) == (rew.min(), rew.max(), len(rew))
    again = type(stats).from_dict(json.loads(json.dumps(stats.to_dict())))
    np.testing.assert_array_equal(again.obs_std, stats.obs_std)
    assert again.count == stats.count


def test_normalization_stats_floor_constant_features(tmp_path):
    with EpisodeStore.create(tmp_path / "c.zarr", SCHEMAS["flat"]) as w:
        ep = make_episode("flat", 10, 0)
        w.append(replace(ep, observations=np.full((10, 3), 2.5, np.float32)))
        stats = w.normalization_stats(eps=1e-2)
    assert stats.obs_mean.tolist() == [2.5] * 3 and stats.obs_std.tolist() == pytest.approx([1e-2] * 3)


def test_version_selection_checks_the_fingerprint(filled):
    path, _, versions = filled
    with EpisodeStore.open(path) as r:
        v = r.version
        assert v == versions[-1] and (v.episodes, v.steps) == (6, sum(4 + 3 * i for i in range(6)))
        assert r.select(version=v).tolist() == list(range(6))
        assert r.select(version=versions[0].to_dict()).tolist() == [0, 1, 2, 3]
        assert r.select(version=versions[1], sources="scripted").tolist() == [0, 3]
        assert r.select(version=5).tolist() == list(range(5))
        with pytest.raises(ValueError, match="fingerprint at 6 episodes is .* not ffffffffffff"):
            r.select(version=DatasetVersion(6, v.steps, "f" * 32))
        with pytest.raises(ValueError, match="fingerprint at 4 episodes"):  # a later version's fingerprint
            r.select(version=DatasetVersion(4, versions[0].steps, versions[1].fingerprint))
        with pytest.raises(ValueError, match="version with 7 episodes, but 6 are committed"):
            r.select(version=DatasetVersion(7, 0, v.fingerprint))


def test_dataset_version_survives_dict_and_json(filled):
    v = filled[2][-1]
    assert DatasetVersion.from_dict(v.to_dict()) == v
    assert DatasetVersion.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    assert str(v) == f"6 episodes @ {v.fingerprint[:12]}"


def test_reader_sees_appends_after_refresh(tmp_path):
    path = tmp_path / "s.zarr"
    with EpisodeStore.create(path, SCHEMAS["flat"]) as w:
        r = EpisodeStore.open(path)
        before = r.version
        ep = make_episode("flat", 7, 3, source="human")
        w.append(ep)
        assert r.num_episodes == 0 and r.version == before  # nothing until refresh
        with pytest.raises(IndexError, match=r"episode 0 not in 0\.\.-1"):
            r.episode(0)
        assert r.refresh() == w.version
        assert_episode_equal("flat", r.episode(0), expected("flat", ep), 0)
        assert len(r.load_transitions()) == 7 and r.select(sources="human").tolist() == [0]
        with pytest.raises(IndexError, match=r"episodes \[1\] not in 0\.\.0"):
            r.select(episodes=[0, 1])


def test_dataset_info_counts_per_source(filled):
    path, model, _ = filled
    with EpisodeStore.open(path) as r:
        info = dataset_info(r)
    assert (info["episodes"], info["transitions"]) == (6, sum(len(m["actions"]) for m in model))
    assert info["version"] == r.version.to_dict() and info["env"] == {"id": "Reach-v0"}
    assert list(info["observation_keys"]) == ["joint", "target", "tick"]
    assert sorted(info["sources"]) == sorted(SOURCES[:3])
    for src, s in info["sources"].items():
        mine = [m for m in model if m["provenance"]["source"] == src]
        known = [m["success"] for m in mine if m["success"] is not None]
        assert s["episodes"] == len(mine)
        assert s["transitions"] == sum(len(m["actions"]) for m in mine)
        assert s["return_mean"] == pytest.approx(np.mean([m["returns"] for m in mine]))
        assert s["success_rate"] == (pytest.approx(np.mean(known)) if known else None)
        assert s["interventions"] == sum(int(m["interventions"].sum()) for m in mine)
        assert s["policies"] == sorted({m["provenance"]["policy_id"] for m in mine})
    assert info["human_intervention_steps"] == sum(int(m["interventions"].sum()) for m in model)
    assert info["size_on_disk_bytes"] > 0


def test_verify_detects_a_tampered_chunk(filled):
    path = filled[0]
    assert verify_dataset(path) == ([], [])
    zarr.open_array(str(path / "data" / "rewards"), mode="r+")[0] = 123
    problems, _ = verify_dataset(path)
    assert any("content digest mismatch in 1 episode (0)" in p for p in problems), problems
    assert any("stored returns differ from the sums of rewards in episodes 0" in p for p in problems), problems


def test_verify_detects_a_tampered_index_fingerprint(filled):
    path = filled[0]
    index = json.loads((path / "index.json").read_text())
    index["fingerprint"] = "0123456789ab" + index["fingerprint"][12:]
    (path / "index.json").write_text(json.dumps(index))
    problems, _ = verify_dataset(path)
    last = filled[2][-1]
    assert problems == [
        f"index.json fingerprint 0123456789ab != the chain value {last.fingerprint[:12]} stored with "
        f"the last episode ({last.episodes - 1})"
    ]


def test_writer_spare_room_is_a_note_and_close_trims_it(tmp_path):
    path = tmp_path / "s.zarr"
    w = EpisodeStore.create(path, SCHEMAS["flat"])
    w.append(make_episode("flat", 5, 0))
    problems, notes = verify_dataset(path)
    assert problems == [] and any("rows past the commit" in n for n in notes)
    w.close()
    assert verify_dataset(path) == ([], [])
    with EpisodeStore.open(path, mode="a") as again:  # reopening keeps content and version
        assert again.version == w.version


def test_create_over_existing_store_raises(filled):
    path = filled[0]
    before = (path / "index.json").read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        EpisodeStore.create(path, SCHEMAS["dict"])
    assert (path / "index.json").read_bytes() == before


@pytest.mark.parametrize("mode", ["r", "a"])
def test_opening_a_missing_store_names_the_path(tmp_path, mode):
    missing = tmp_path / "nope.zarr"
    with pytest.raises(FileNotFoundError) as err:
        EpisodeStore.open(missing, mode=mode)
    assert str(missing) in str(err.value)
    assert not missing.exists()  # opening does not create it


def test_open_mode_must_be_r_or_a(filled):
    with pytest.raises(ValueError, match="mode must be 'r' or 'a', got 'w'"):
        EpisodeStore.open(filled[0], mode="w")


def test_recorder_episode_round_trips(tmp_path):
    rec = EpisodeRecorder()
    with pytest.raises(ValueError, match="no steps"):
        rec.finish({"source": "online", "policy_id": "p"})
    rng = np.random.default_rng(0)
    obs = [rng.normal(size=3).astype(np.float32) for _ in range(5)]
    rec.start(obs[0])
    for t in range(4):
        last = t == 3
        rec.add(
            rng.uniform(-1, 1, 2).astype(np.float32),
            0.5 * t,
            terminated=last,
            truncated=last,
            next_obs=obs[t + 1],
            info={"is_success": t == 1},
            intervention=t == 2,
        )
    ep = rec.finish({"source": "online", "policy_id": "p"}, seed=11)
    assert (ep.success, ep.terminated, ep.truncated) == (True, True, False)  # terminated wins over truncated
    with EpisodeStore.create(tmp_path / "s.zarr", SCHEMAS["flat"]) as w:
        w.append(ep)
        got = w.episode(0)
    assert_episode_equal("flat", got, expected("flat", ep), 0)
    np.testing.assert_array_equal(got.next_observations(), np.stack(obs[1:]))


# -- known bugs (each fails today; strict, so a fix turns it into an XPASS failure to remove) ---------


def test_empty_selection_loads_zero_transitions(filled):
    with EpisodeStore.open(filled[0]) as r:
        none = r.select(sources="random")
        assert none.tolist() == []
        tr = r.load_transitions(none)
        assert len(tr) == 0 and tr.observations.shape == (0, 8)
        with pytest.raises(ValueError, match="no transitions selected"):
            r.normalization_stats(none)


def test_empty_store_loads_zero_transitions(tmp_path):
    with EpisodeStore.create(tmp_path / "e.zarr", SCHEMAS["flat"]) as w:
        assert len(w.load_transitions()) == 0


def test_mutating_a_read_episode_leaves_the_store_alone(tmp_path):
    path = tmp_path / "s.zarr"
    with EpisodeStore.create(path, SCHEMAS["flat"]) as w:
        w.append(make_episode("flat", 5, 0, source="scripted", policy_id="pA"))
        relabelled = w.episode(0)
        relabelled.provenance["source"] = "online"  # e.g. to re-append it under another source
        relabelled.provenance["policy_id"] = "pZ"
        assert w.episode(0).provenance["source"] == "scripted"
        w.append(replace(relabelled, index=None))
    assert verify_dataset(path)[0] == []


def test_unreadable_index_gives_a_clear_error_to_writers_too(filled):
    path = filled[0]
    (path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read index.json"):
        EpisodeStore.open(path, mode="r")
    with pytest.raises(ValueError, match="cannot read index.json"):
        EpisodeStore.open(path, mode="a")


def test_empty_version_with_a_wrong_fingerprint_raises(filled):
    with EpisodeStore.open(filled[0]) as r:
        with pytest.raises(ValueError, match="fingerprint"):
            r.select(version=DatasetVersion(0, 0, "ab" * 16))
