"""Bad input is refused with a clear error before anything reaches the disk.

Every case opens a writer, appends one good episode, hashes every file of the store
(index, metadata, chunks, lock), tries the bad append, and checks the error message names
the key and the expected/actual value, and that not one byte of the store changed.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

from o2o.datasets import Episode, EpisodeStore, EpisodeValidationError, Schema
from o2o.datasets.inspect import verify_dataset

T = 6  # steps of the episodes below; distinct from every dimension, so shapes read unambiguously
OBS_DIM, ACT_DIM = 4, 2


def flat_schema(action_bounds: str = "error", obs_dtype=np.float32) -> Schema:
    return Schema.from_spaces(
        gym.spaces.Box(-10, 10, (OBS_DIM,), obs_dtype),
        gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32),
        action_bounds=action_bounds,
    )


def dict_schema() -> Schema:
    obs = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-10, 10, (3,), np.float32),
            "grip": gym.spaces.Box(0, 1, (1,), np.float32),
        }
    )
    return Schema.from_spaces(obs, gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32))


def flat_episode(seed: int = 0, n: int = T) -> Episode:
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    terminals[-1:] = True
    return Episode(
        observations=rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        terminals=terminals,
        timeouts=np.zeros(n, bool),
        final_observation=rng.normal(size=OBS_DIM).astype(np.float32),
        provenance={"source": "scripted", "policy_id": "reach-v1"},
        seed=seed,
        success=True,
    )


def dict_episode(seed: int = 0, n: int = T) -> Episode:
    ep = flat_episode(seed, n)
    rng = np.random.default_rng(seed + 100)
    return replace(
        ep,
        observations={
            "pos": rng.normal(size=(n, 3)).astype(np.float32),
            "grip": rng.uniform(0, 1, (n, 1)).astype(np.float32),
        },
        final_observation={
            "pos": rng.normal(size=3).astype(np.float32),
            "grip": rng.uniform(0, 1, 1).astype(np.float32),
        },
    )


def _set(arr, index, value):
    arr = np.array(arr, copy=True)
    arr[index] = value
    return arr


def _flags_at(step: int, n: int = T) -> np.ndarray:
    return _set(np.zeros(n, bool), step, True)


def _empty(ep: Episode) -> Episode:
    obs = {k: v[:0] for k, v in ep.observations.items()} if isinstance(ep.observations, dict) else ep.observations[:0]
    return replace(
        ep,
        observations=obs,
        actions=ep.actions[:0],
        rewards=ep.rewards[:0],
        terminals=ep.terminals[:0],
        timeouts=ep.timeouts[:0],
    )


NAN, INF = float("nan"), float("inf")

# (id, schema, change to a good episode, fragments the error must contain)
BAD_CASES = [
    # shapes
    (
        "obs-shape",
        "flat",
        lambda e: replace(e, observations=np.zeros((T, 5), np.float32)),
        ["observations['state']", "(6, 5)", "expected (6, 4)"],
    ),
    (
        "final-obs-shape",
        "flat",
        lambda e: replace(e, final_observation=np.zeros(5, np.float32)),
        ["final_observation['state']", "(5,)", "expected (4,)"],
    ),
    (
        "action-dim",
        "flat",
        lambda e: replace(e, actions=np.zeros((T, 3), np.float32)),
        ["actions", "(6, 3)", "expected (6, 2)"],
    ),
    (
        "action-not-2d",
        "flat",
        lambda e: replace(e, actions=np.zeros(T, np.float32)),
        ["actions", "(6,)", "expected (6, 2)"],
    ),
    # dtype kinds: casting within a kind is allowed, across kinds is not
    (
        "obs-bool",
        "flat",
        lambda e: replace(e, observations=np.ones((T, OBS_DIM), bool)),
        ["observations['state']", "dtype bool", "float32"],
    ),
    (
        "obs-str",
        "flat",
        lambda e: replace(e, observations=np.full((T, OBS_DIM), "x")),
        ["observations['state']", "<U1", "float32"],
    ),
    (
        "actions-bool",
        "flat",
        lambda e: replace(e, actions=np.zeros((T, ACT_DIM), bool)),
        ["actions", "dtype bool", "float32"],
    ),
    ("rewards-bool", "flat", lambda e: replace(e, rewards=np.ones(T, bool)), ["rewards", "dtype bool", "float32"]),
    (
        "terminals-int",
        "flat",
        lambda e: replace(e, terminals=e.terminals.astype(np.int64)),
        ["terminals", "dtype int64", "bool"],
    ),
    (
        "timeouts-float",
        "flat",
        lambda e: replace(e, timeouts=e.timeouts.astype(np.float32)),
        ["timeouts", "dtype float32", "bool"],
    ),
    (
        "interventions-int",
        "flat",
        lambda e: replace(e, interventions=np.zeros(T, np.int8)),
        ["interventions", "dtype int8", "bool"],
    ),
    # non-finite values, each names the key, the value and where
    (
        "obs-nan",
        "flat",
        lambda e: replace(e, observations=_set(e.observations, (2, 1), NAN)),
        ["observations['state']", "non-finite", "nan", "(2, 1)"],
    ),
    (
        "obs-inf",
        "flat",
        lambda e: replace(e, observations=_set(e.observations, (5, 3), -INF)),
        ["observations['state']", "-inf", "(5, 3)"],
    ),
    ("actions-nan", "flat", lambda e: replace(e, actions=_set(e.actions, (3, 0), NAN)), ["actions", "nan", "(3, 0)"]),
    ("actions-inf", "flat", lambda e: replace(e, actions=_set(e.actions, (0, 1), INF)), ["actions", "inf", "(0, 1)"]),
    ("rewards-nan", "flat", lambda e: replace(e, rewards=_set(e.rewards, 4, NAN)), ["rewards", "nan", "(4,)"]),
    ("rewards-inf", "flat", lambda e: replace(e, rewards=_set(e.rewards, 0, INF)), ["rewards", "inf", "(0,)"]),
    (
        "final-obs-nan",
        "flat",
        lambda e: replace(e, final_observation=_set(e.final_observation, 2, NAN)),
        ["final_observation['state']", "nan", "(2,)"],
    ),
    (
        "final-obs-inf",
        "flat",
        lambda e: replace(e, final_observation=_set(e.final_observation, 0, INF)),
        ["final_observation['state']", "inf", "(0,)"],
    ),
    (
        "dict-obs-nan",
        "dict",
        lambda e: replace(e, observations=dict(e.observations, grip=_set(e.observations["grip"], (1, 0), NAN))),
        ["observations['grip']", "nan", "(1, 0)"],
    ),
    (
        "dict-final-inf",
        "dict",
        lambda e: replace(e, final_observation=dict(e.final_observation, pos=_set(e.final_observation["pos"], 1, INF))),
        ["final_observation['pos']", "inf", "(1,)"],
    ),
    # action bounds (policy 'error')
    (
        "action-above-bound",
        "flat",
        lambda e: replace(e, actions=_set(e.actions, (3, 1), 1.5)),
        ["actions[3]", "1.5", "outside the action space", "[-1.0, -1.0]", "[1.0, 1.0]", "dimension (1,)"],
    ),
    (
        "action-below-bound",
        "flat",
        lambda e: replace(e, actions=_set(e.actions, (0, 0), -1.25)),
        ["actions[0]", "-1.25", "outside the action space", "dimension (0,)"],
    ),
    # lengths
    ("length-0", "flat", _empty, ["length must be >= 1", "(0, 2)"]),
    ("length-0-dict", "dict", _empty, ["length must be >= 1"]),
    (
        "obs-longer",
        "flat",
        lambda e: replace(e, observations=np.zeros((T + 1, OBS_DIM), np.float32)),
        ["observations['state']", "(7, 4)", "expected (6, 4)"],
    ),
    ("rewards-shorter", "flat", lambda e: replace(e, rewards=e.rewards[:-1]), ["rewards", "(5,)", "expected (6,)"]),
    (
        "terminals-shorter",
        "flat",
        lambda e: replace(e, terminals=e.terminals[1:]),
        ["terminals", "(5,)", "expected (6,)"],
    ),
    (
        "timeouts-longer",
        "flat",
        lambda e: replace(e, timeouts=np.zeros(T + 2, bool)),
        ["timeouts", "(8,)", "expected (6,)"],
    ),
    (
        "interventions-shorter",
        "flat",
        lambda e: replace(e, interventions=np.zeros(T - 1, bool)),
        ["interventions", "(5,)", "expected (6,)"],
    ),
    (
        "dict-key-shorter",
        "dict",
        lambda e: replace(e, observations=dict(e.observations, grip=e.observations["grip"][:-1])),
        ["observations['grip']", "(5, 1)", "expected (6, 1)"],
    ),
    # flags only on the last step
    (
        "terminal-early",
        "flat",
        lambda e: replace(e, terminals=_flags_at(2)),
        ["terminals is True at step 2", "last step 5"],
    ),
    (
        "timeout-early",
        "flat",
        lambda e: replace(e, terminals=np.zeros(T, bool), timeouts=_flags_at(0)),
        ["timeouts is True at step 0", "last step 5"],
    ),
    (
        "terminal-and-timeout",
        "flat",
        lambda e: replace(e, terminals=_flags_at(T - 1), timeouts=_flags_at(T - 1)),
        ["both terminal and timeout"],
    ),
    # observation keys
    (
        "dict-missing-key",
        "dict",
        lambda e: replace(e, observations={"pos": e.observations["pos"]}),
        ["observation key 'grip' is missing", "['grip', 'pos']"],
    ),
    (
        "dict-missing-final-key",
        "dict",
        lambda e: replace(e, final_observation={"grip": e.final_observation["grip"]}),
        ["observation key 'pos' is missing"],
    ),
    (
        "dict-extra-key",
        "dict",
        lambda e: replace(e, observations=dict(e.observations, force=np.zeros((T, 2), np.float32))),
        ["observations has keys ['force'] not in the schema", "['grip', 'pos']"],
    ),
    (
        "dict-extra-final-key",
        "dict",
        lambda e: replace(e, final_observation=dict(e.final_observation, force=np.zeros(2))),
        ["final_observation has keys ['force']"],
    ),
    (
        "flat-obs-into-dict",
        "dict",
        lambda e: replace(e, observations=np.zeros((T, 4), np.float32)),
        ["observations has keys ['state'] not in the schema"],
    ),
    (
        "dict-obs-into-flat",
        "flat",
        lambda e: replace(e, observations={"state": e.observations, "x": e.observations}),
        ["observations has keys ['x']", "['state']"],
    ),
    # provenance and record
    (
        "source-unknown",
        "flat",
        lambda e: replace(e, provenance={"source": "robot", "policy_id": "p"}),
        ["provenance source 'robot'", "scripted", "online"],
    ),
    ("source-missing", "flat", lambda e: replace(e, provenance={"policy_id": "p"}), ["provenance source None"]),
    ("policy-id-missing", "flat", lambda e: replace(e, provenance={"source": "human"}), ["policy_id"]),
    ("policy-id-empty", "flat", lambda e: replace(e, provenance={"source": "human", "policy_id": ""}), ["policy_id"]),
    (
        "provenance-not-mapping",
        "flat",
        lambda e: replace(e, provenance="scripted"),
        ["provenance must be a mapping", "str"],
    ),
    ("seed-negative", "flat", lambda e: replace(e, seed=-1), ["seed", "non-negative", "got -1"]),
    ("seed-float", "flat", lambda e: replace(e, seed=1.5), ["seed", "got 1.5"]),
    ("seed-too-big", "flat", lambda e: replace(e, seed=2**64 - 1), ["seed", f"got {2**64 - 1}", "< 2**64 - 1"]),
]


def _writer_factory(root):
    stores = []

    def make(kind: str):
        store = EpisodeStore.create(
            root / f"{kind}-{len(stores)}.zarr", dict_schema() if kind == "dict" else flat_schema()
        )
        stores.append(store)
        store.append((dict_episode if kind == "dict" else flat_episode)(seed=1))
        return store

    return make, stores


@pytest.fixture
def open_writer(tmp_path):
    """``open_writer(kind)``: a new writer ('flat' or 'dict' schema) holding one good episode."""
    make, stores = _writer_factory(tmp_path)
    yield make
    for s in stores:
        s.close()


@pytest.fixture(scope="module")
def shared_writers(tmp_path_factory):
    """One open writer per schema kind for all refused-append cases (each checks its own before/after)."""
    make, stores = _writer_factory(tmp_path_factory.mktemp("refused"))
    yield {"flat": make("flat"), "dict": make("dict")}
    for s in stores:
        s.close()


def assert_refused(store: EpisodeStore, snapshot, episodes: list[Episode], fragments: list[str], error=ValueError):
    """The append raises ``error`` whose message has every fragment; no byte of the store changes."""
    before_files = snapshot(store.path)
    before_version = store.version
    inputs = copy.deepcopy(episodes)
    with pytest.raises(error) as err:
        store.append_many(episodes)
    msg = str(err.value)
    for fragment in [f"dataset {store.path!r}", *fragments]:
        assert fragment in msg, f"{fragment!r} not in error message {msg!r}"
    assert snapshot(store.path) == before_files, "a refused append changed files of the store"
    assert store.version == before_version
    with EpisodeStore.open(store.path) as reader:
        assert reader.version == before_version
    for ep, orig in zip(episodes, inputs):  # validation never mutates its input
        for name in ("actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(getattr(ep, name), getattr(orig, name))
    return msg


@pytest.mark.parametrize("kind, change, fragments", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_episode_is_refused_and_nothing_written(shared_writers, snapshot, kind, change, fragments):
    store = shared_writers[kind]
    bad = change((dict_episode if kind == "dict" else flat_episode)(seed=2))
    error = (
        ValueError if any(w in fragments[0] for w in ("provenance", "policy_id", "seed")) else EpisodeValidationError
    )
    msg = assert_refused(store, snapshot, [bad], fragments, error)
    assert "episode 1:" in msg  # names which episode of the dataset it would have been


@pytest.mark.parametrize("kind", ["flat", "dict"])
def test_store_takes_good_episodes_after_refusals(open_writer, snapshot, kind):
    store = open_writer(kind)
    make = dict_episode if kind == "dict" else flat_episode
    for _, case_kind, change, fragments in BAD_CASES:
        if case_kind == kind:
            with pytest.raises(ValueError):
                store.append(change(make(seed=2)))
    assert store.append(make(seed=3)) == 1
    assert store.num_episodes == 2 and verify_dataset(store.path)[0] == []


@pytest.mark.parametrize("bad_position", [0, 2, 4])
def test_append_many_with_one_bad_episode_writes_nothing(open_writer, snapshot, bad_position):
    store = open_writer("flat")
    batch = [flat_episode(seed=10 + j) for j in range(5)]
    batch[bad_position] = replace(batch[bad_position], rewards=_set(batch[bad_position].rewards, 1, NAN))
    assert_refused(
        store,
        snapshot,
        batch,
        [f"episode {1 + bad_position} (batch item {bad_position})", "rewards", "nan"],
        EpisodeValidationError,
    )
    batch[bad_position] = flat_episode(seed=99)
    assert store.append_many(batch) == [1, 2, 3, 4, 5]


def test_append_many_with_bad_provenance_last_writes_nothing(open_writer, snapshot):
    store = open_writer("flat")
    batch = [
        flat_episode(seed=10),
        flat_episode(seed=11),
        replace(flat_episode(seed=12), provenance={"source": "x", "policy_id": "p"}),
    ]
    assert_refused(store, snapshot, batch, ["batch item 2", "provenance source 'x'"])
    assert store.provenance_table == [
        {"source": "scripted", "policy_id": "reach-v1", "policy_version": "1", "params": {}}
    ]


def test_same_kind_casts_are_stored_cross_kind_refused(open_writer, snapshot):
    store = open_writer("flat")
    ep = flat_episode(seed=5)
    as64 = replace(
        ep,
        observations=ep.observations.astype(np.float64),
        actions=ep.actions.astype(np.float64),
        rewards=ep.rewards.astype(np.float64),
        final_observation=ep.final_observation.astype(np.float64),
    )
    assert store.append(as64) == 1
    got = store.episode(1)
    assert got.observations.dtype == np.float32 and got.actions.dtype == np.float32
    np.testing.assert_array_equal(got.observations, ep.observations)
    ints = replace(
        ep,
        observations=np.arange(T * OBS_DIM, dtype=np.int64).reshape(T, OBS_DIM),
        rewards=np.arange(T, dtype=np.int32),
        actions=np.zeros((T, ACT_DIM), np.int16),
    )
    assert store.append(ints) == 2  # integers are exact in the float store
    np.testing.assert_array_equal(store.episode(2).observations, ints.observations.astype(np.float32))
    np.testing.assert_array_equal(store.episode(2).rewards, np.arange(T, dtype=np.float32))


def test_float_observations_into_int_schema_are_refused(tmp_path, snapshot):
    with EpisodeStore.create(tmp_path / "i.zarr", flat_schema(obs_dtype=np.int32)) as store:
        ep = flat_episode(seed=1)
        good = replace(ep, observations=np.ones((T, OBS_DIM), np.int64), final_observation=np.ones(OBS_DIM, np.uint8))
        assert store.append(good) == 0
        bad = replace(good, observations=np.ones((T, OBS_DIM), np.float32))
        assert_refused(
            store, snapshot, [bad], ["observations['state']", "dtype float32", "int32"], EpisodeValidationError
        )


def test_action_bounds_clip_stores_clipped_values(tmp_path):
    with EpisodeStore.create(tmp_path / "c.zarr", flat_schema("clip")) as store:
        ep = flat_episode(seed=1)
        raw = _set(_set(ep.actions, (2, 0), 3.0), (4, 1), -7.5)
        store.append(replace(ep, actions=raw))
        np.testing.assert_array_equal(store.episode(0).actions, np.clip(raw, -1, 1))
        assert raw[2, 0] == 3.0  # the caller's array is untouched
    assert verify_dataset(tmp_path / "c.zarr")[0] == []


def test_action_bounds_ignore_stores_values_as_given(tmp_path):
    with EpisodeStore.create(tmp_path / "g.zarr", flat_schema("ignore")) as store:
        ep = flat_episode(seed=1)
        raw = _set(ep.actions, (2, 0), 3.0)
        store.append(replace(ep, actions=raw))
        np.testing.assert_array_equal(store.episode(0).actions, raw)
    assert verify_dataset(tmp_path / "g.zarr")[0] == []


def test_action_bounds_policy_must_be_known():
    with pytest.raises(ValueError, match=re.escape("action_bounds 'wrap'")):
        flat_schema("wrap")


def test_reader_and_closed_writer_refuse_appends(open_writer, snapshot):
    store = open_writer("flat")
    with EpisodeStore.open(store.path) as reader:
        assert_refused(reader, snapshot, [flat_episode(seed=4)], ["read-only", "mode='a'"], PermissionError)
    store.close()
    assert_refused(store, snapshot, [flat_episode(seed=4)], ["read-only (or closed)"], PermissionError)


# -- values the store cannot represent --------------------------------------------------------------


@pytest.mark.parametrize("field", ["rewards", "observations", "final_observation"])
def test_float64_overflowing_float32_is_refused(open_writer, snapshot, field):
    store = open_writer("flat")
    ep = flat_episode(seed=2)
    value = getattr(ep, field).astype(np.float64)
    value.reshape(-1)[0] = 1e39  # finite in float64, inf in float32
    with np.errstate(over="ignore"):
        assert_refused(store, snapshot, [replace(ep, **{field: value})], [field, "1e+39"], EpisodeValidationError)


def test_integer_overflowing_the_stored_dtype_is_refused(tmp_path, snapshot):
    with EpisodeStore.create(tmp_path / "i8.zarr", flat_schema(obs_dtype=np.int8)) as store:
        ep = flat_episode(seed=1)
        good = replace(ep, observations=np.ones((T, OBS_DIM), np.int8), final_observation=np.ones(OBS_DIM, np.int8))
        store.append(good)
        bad = replace(good, observations=np.full((T, OBS_DIM), 300, np.int64))
        assert_refused(store, snapshot, [bad], ["observations['state']", "300", "int8"], EpisodeValidationError)
