"""Import and export of foreign formats: exact round trips, selections, and refused files."""

from __future__ import annotations

import json
import time

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from o2o.datasets import Episode, EpisodeStore, Schema
from o2o.datasets.formats import ForeignFormatError, export_store, import_file, make_selection
from o2o.envs import env_metadata, make_env
from o2o.pipeline.cli import main
from o2o.pipeline.config import load_config

ARRAYS = ("actions", "rewards", "terminals", "timeouts", "interventions")
TASK = {"start_cell": [2, 3], "goal_cell": [3, 1]}


def env_cfg(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(load_config("collect", [f"env={name}"]).env, resolve=True)


def synthetic(rng, T: int, source: str, flags: str, seed, success, task=None) -> Episode:
    """A pointmaze-shaped episode with every record field set (interventions included; a task, the
    reset options it started from, where given)."""
    prov = {"source": source, "policy_id": f"{source}_x", "policy_version": "7", "params": {"k": [1, 2]}}
    if task is not None:
        prov["task"] = task
    return Episode(
        observations=rng.normal(size=(T, 6)).astype(np.float32),
        actions=rng.uniform(-1, 1, (T, 2)).astype(np.float32),
        rewards=rng.normal(size=T).astype(np.float32),
        terminals=np.eye(1, T, T - 1, dtype=bool)[0] & (flags == "term"),
        timeouts=np.eye(1, T, T - 1, dtype=bool)[0] & (flags == "timeout"),
        final_observation=rng.normal(size=6).astype(np.float32),
        interventions=rng.random(T) < 0.3,
        provenance=prov,
        seed=seed,
        success=success,
        start_time=1.7e9 + rng.random(),
        end_time=1.7e9 + 10 + rng.random(),
    )


@pytest.fixture(scope="module")
def source_store(tmp_path_factory):
    """A pointmaze store of 6 episodes: mixed sources, interventions, one episode ending without a flag,
    and three tasks (reset options) besides episodes from the env's own reset."""
    path = tmp_path_factory.mktemp("src") / "maze.zarr"
    cfg = env_cfg("pointmaze")
    env = make_env(cfg)
    schema = Schema.from_spaces(env.observation_space, env.action_space, env.get_wrapper_attr("obs_layout"))
    rng = np.random.default_rng(0)
    tasks = [{"start_cell": [3, 3], "goal_cell": [1, 1]}, None, {"start_cell": [1, 2]}, None, TASK, TASK]
    eps = [
        synthetic(rng, 5 + 3 * i, src, flags, seed, succ, tasks[i])
        for i, (src, flags, seed, succ) in enumerate(
            [
                ("scripted", "timeout", 0, True),
                ("human", "term", None, False),
                ("random", "timeout", 2, None),
                ("human", "none", 3, True),
                ("learned", "term", 4, False),
                ("human", "timeout", 5, None),
            ]
        )
    ]
    with EpisodeStore.create(path, schema, env=env_metadata(env, cfg)) as store:
        store.append_many(eps[:3])
        store.append_many(eps[3:])
    env.close()
    return path


def assert_same_episode(a: Episode, b: Episode) -> None:
    """Every array and record equal; provenance equal except the ``imported`` note the importer adds."""
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.final_observation, b.final_observation)
    for key in ARRAYS:
        x, y = np.asarray(getattr(a, key)), np.asarray(getattr(b, key))
        assert x.dtype == y.dtype and np.array_equal(x, y), key
    assert (a.seed, a.success, a.start_time, a.end_time) == (b.seed, b.success, b.start_time, b.end_time)
    pb = dict(b.provenance, params={k: v for k, v in b.provenance["params"].items() if k != "imported"})
    assert a.provenance == pb


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_minari_round_trip_is_exact(source_store, tmp_path, monkeypatch, data_format):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    out = export_store("minari", source_store, "o2o/maze-v0", data_format=data_format)
    assert out["episodes"] == 6 and out["env_spec"] == "o2o/pointmaze-v0"
    ds = minari.load_dataset("o2o/maze-v0")  # Minari's own loader
    with EpisodeStore.open(source_store) as src:
        assert ds.total_episodes == 6 and ds.total_steps == src.num_steps
        for ep, i in zip(ds.iterate_episodes(), range(6)):
            e = src.episode(i)
            np.testing.assert_array_equal(ep.observations, np.concatenate([e.observations, e.final_observation[None]]))
            for mine, theirs in (
                (e.actions, ep.actions),
                (e.rewards, ep.rewards),
                (e.terminals, ep.terminations),
                (e.timeouts, ep.truncations),
            ):
                np.testing.assert_array_equal(mine, theirs)
        env = ds.recover_environment()  # the spec rebuilds the o2o env
        assert env.observation_space == make_env(src.env).observation_space
        env.close()
    imported = import_file("minari", "o2o/maze-v0", tmp_path / "back.zarr")
    assert imported.created and imported.episodes == list(range(6))
    assert imported.origin["format"] == "minari" and len(imported.origin["sha256"]) == 64
    with EpisodeStore.open(source_store) as a, EpisodeStore.open(tmp_path / "back.zarr") as b:
        assert b.env == a.env and b.schema.to_attrs() == a.schema.to_attrs()
        for i in range(6):
            assert_same_episode(a.episode(i), b.episode(i))
        assert b.episode(0).provenance["params"]["imported"] == imported.origin


def test_d4rl_round_trip_is_exact(source_store, tmp_path):
    out = export_store("d4rl", source_store, tmp_path / "maze.hdf5")
    assert out["episodes"] == 6 and "without a terminal or timeout" in out["notes"][0]
    with h5py.File(tmp_path / "maze.hdf5") as f, EpisodeStore.open(source_store) as src:
        # What another library reads: plain D4RL keys over all steps.
        tr = src.load_transitions()
        for key in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            np.testing.assert_array_equal(f[key][()], getattr(tr, key))
    import_file("d4rl", tmp_path / "maze.hdf5", tmp_path / "back.zarr")
    with EpisodeStore.open(source_store) as a, EpisodeStore.open(tmp_path / "back.zarr") as b:
        assert b.num_episodes == 6 and b.env == a.env
        for i in range(6):
            assert_same_episode(a.episode(i), b.episode(i))
        # Each episode's task (its reset options) comes back with it, and none where it had none.
        assert [b.episode(i).task for i in range(6)] == [a.episode(i).task for i in range(6)]
        assert list(b.episodes_table()["task"]) == [
            {"start_cell": [3, 3], "goal_cell": [1, 1]},
            None,
            {"start_cell": [1, 2]},
            None,
            TASK,
            TASK,
        ]


def test_selection_by_source_range_and_version(source_store, tmp_path):
    with EpisodeStore.open(source_store) as src:
        v3 = src.version_at(3)
    export_store("d4rl", source_store, tmp_path / "human.hdf5", make_selection(["human"]))
    export_store("d4rl", source_store, tmp_path / "range.hdf5", make_selection(episodes="1:4"))
    r = export_store("d4rl", source_store, tmp_path / "v3.hdf5", make_selection(version=f"3@{v3.fingerprint[:12]}"))
    assert r["version"] == v3.to_dict()
    for name, expect in (("human", [1, 3, 5]), ("range", [1, 2, 3]), ("v3", [0, 1, 2])):
        import_file("d4rl", tmp_path / f"{name}.hdf5", tmp_path / f"{name}.zarr")
        with EpisodeStore.open(source_store) as a, EpisodeStore.open(tmp_path / f"{name}.zarr") as b:
            assert b.num_episodes == len(expect), name
            for j, i in enumerate(expect):
                assert_same_episode(a.episode(i), b.episode(j))
    # On import: the full export, selected by source and by the source store's version.
    export_store("d4rl", source_store, tmp_path / "all.hdf5")
    import_file("d4rl", tmp_path / "all.hdf5", tmp_path / "sel.zarr", make_selection(["human"], version="4"))
    with EpisodeStore.open(tmp_path / "sel.zarr") as b:
        assert [b.episode(j).provenance["source"] for j in range(b.num_episodes)] == ["human", "human"]
    with pytest.raises(ForeignFormatError, match="not from that dataset version"):
        import_file("d4rl", tmp_path / "all.hdf5", tmp_path / "x.zarr", make_selection(version="3@00000000ffff"))
    assert not (tmp_path / "x.zarr").exists()


def write_d4rl(path, n=40, ends=(10, 25, 40), next_obs=True, **overrides):
    """A plain D4RL-style file (as another library writes it), keys overridable to break it."""
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(n + 1, 6)).astype(np.float32)
    d = {
        "observations": obs[:-1],
        "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    for e in ends:
        d["timeouts"][e - 1] = True
    if next_obs:
        d["next_observations"] = obs[1:]
    d.update(overrides)
    with h5py.File(path, "w") as f:
        for k, v in d.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return d


def test_plain_d4rl_file_imports_into_an_o2o_env_store(source_store, tmp_path):
    d = write_d4rl(tmp_path / "plain.hdf5")
    r = import_file(
        "d4rl",
        tmp_path / "plain.hdf5",
        tmp_path / "p.zarr",
        env_cfg=env_cfg("pointmaze"),
        source="scripted",
        policy_id="old_project",
    )
    assert r.episodes == [0, 1, 2] and r.steps == 40
    with EpisodeStore.open(tmp_path / "p.zarr") as b:
        ep = b.episode(1)
        np.testing.assert_array_equal(ep.observations, d["observations"][10:25])
        np.testing.assert_array_equal(ep.final_observation, d["next_observations"][24])
        assert ep.provenance["source"] == "scripted" and ep.provenance["policy_id"] == "old_project"
        assert b.env["name"] == "pointmaze"
    # Without next_observations the last step of each episode has no next observation: dropped.
    write_d4rl(tmp_path / "nonext.hdf5", next_obs=False)
    r = import_file("d4rl", tmp_path / "nonext.hdf5", tmp_path / "n.zarr")
    assert r.steps == 37 and any("dropped" in n for n in r.notes)
    with EpisodeStore.open(tmp_path / "n.zarr") as b:
        assert b.episode(0).provenance["source"] == "human" and b.episode(0).timeouts[-1]
        np.testing.assert_array_equal(b.episode(0).final_observation, d["observations"][9])


@pytest.mark.parametrize(
    "break_it, message",
    [
        ({"timeouts": None}, "key 'timeouts' is missing"),
        ({"rewards": np.zeros(39, np.float32)}, "key 'rewards' has 39 rows"),
        ({"next_observations": np.zeros((40, 5), np.float32)}, "'next_observations' shape (40, 5)"),
        ({"terminals": np.full(40, 2, np.int64)}, "key 'terminals' holds values other than 0/1"),
        (
            {"observations": np.where(np.arange(40)[:, None] == 17, np.nan, np.ones((40, 6))).astype(np.float32)},
            "episode 1 (rows 10:25): observations['state'] has a non-finite value nan at index (7, 0)",
        ),
        ({"actions": np.full((40, 2), 3.0, np.float32)}, "actions[0] = [3.0, 3.0] outside the action space"),
        (
            {"observations": np.zeros((40, 4), np.float32), "next_observations": np.zeros((40, 4), np.float32)},
            "observation 'state' shape (4,)",
        ),
    ],
)
def test_malformed_or_mismatched_d4rl_leaves_the_store_unchanged(source_store, tmp_path, snapshot, break_it, message):
    target = tmp_path / "t.zarr"
    import_file("d4rl", export_store("d4rl", source_store, tmp_path / "ok.hdf5")["path"], target)
    before = snapshot(target)
    write_d4rl(tmp_path / "bad.hdf5", **break_it)
    with pytest.raises(ForeignFormatError) as err:
        import_file("d4rl", tmp_path / "bad.hdf5", target)
    assert "bad.hdf5" in str(err.value) and message in str(err.value)
    assert snapshot(target) == before
    with pytest.raises(ForeignFormatError):  # into a new path: nothing is created
        import_file("d4rl", tmp_path / "bad.hdf5", tmp_path / "new.zarr", env_cfg=env_cfg("pointmaze"))
    assert not (tmp_path / "new.zarr").exists()


def test_mismatched_minari_and_env_are_refused(source_store, tmp_path, snapshot, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    export_store("minari", source_store, "o2o/maze-v0")
    target = tmp_path / "reacher.zarr"
    assert (
        main(
            [
                "collect",
                "env=reacher",
                "behavior=random",
                "collect.episodes=1",
                f"dataset.path={target}",
                "collect.progress=false",
            ]
        )
        == 0
    )
    before = snapshot(target)
    with pytest.raises(
        ForeignFormatError, match=r"o2o/maze-v0 does not fit dataset .*observation 'state' shape \(6,\)"
    ):
        import_file("minari", "o2o/maze-v0", target)
    with pytest.raises(ForeignFormatError, match="records another env than --env 'reacher'"):
        import_file("minari", "o2o/maze-v0", tmp_path / "y.zarr", env_cfg=env_cfg("reacher"))
    assert snapshot(target) == before and not (tmp_path / "y.zarr").exists()
    # A damaged Minari dataset: an episode's observations lose their final row.
    data = tmp_path / "minari" / "o2o" / "maze-v0" / "data" / "main_data.hdf5"
    with h5py.File(data, "r+") as f:
        obs = f["episode_2/observations"][()]
        del f["episode_2/observations"]
        f["episode_2/observations"] = obs[:-1]
    with pytest.raises(ForeignFormatError, match=r"episode 2: key 'observations' \(state\) has 11 rows for 11 steps"):
        import_file("minari", "o2o/maze-v0", tmp_path / "z.zarr")
    assert not (tmp_path / "z.zarr").exists()


def write_robomimic(path, demos=(4, 6)):
    """A low-dim file in robomimic's layout (robomimic is not installed: it targets robosuite 1.4)."""
    rng = np.random.default_rng(2)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"reward_shaping": False}})
        for n, T in enumerate(demos, start=1):
            g = data.create_group(f"demo_{n}")
            for group in ("obs", "next_obs"):
                g.create_dataset(f"{group}/robot0_eef_pos", data=rng.normal(size=(T, 3)))
                g.create_dataset(f"{group}/object", data=rng.normal(size=(T, 10)))
            g.create_dataset("actions", data=rng.uniform(-1, 1, (T, 7)))
            g.create_dataset("rewards", data=np.eye(1, T, T - 1)[0])
            g.create_dataset("dones", data=np.eye(1, T, T - 1, dtype=np.int64)[0])
            g.attrs["num_samples"] = T
        f.create_dataset("mask/train", data=np.array([b"demo_2"]))


def test_robomimic_low_dim_import(tmp_path, snapshot):
    write_robomimic(tmp_path / "low_dim.hdf5")
    r = import_file("robomimic", tmp_path / "low_dim.hdf5", tmp_path / "rm.zarr", obs_keys="object,robot0_eef_pos")
    assert r.episodes == [0, 1] and r.steps == 10
    with h5py.File(tmp_path / "low_dim.hdf5") as f, EpisodeStore.open(tmp_path / "rm.zarr") as b:
        g = f["data/demo_2"]
        ep = b.episode(1)
        np.testing.assert_allclose(
            ep.observations, np.concatenate([g["obs/object"][()], g["obs/robot0_eef_pos"][()]], 1), rtol=1e-6
        )
        np.testing.assert_allclose(ep.final_observation[10:], g["next_obs/robot0_eef_pos"][-1], rtol=1e-6)
        assert ep.terminals[-1] and ep.success is True and ep.provenance["source"] == "human"
        assert b.schema.obs_layout.keys == ["object", "robot0_eef_pos"] and b.env["id"] == "Lift"
    r = import_file(
        "robomimic",
        tmp_path / "low_dim.hdf5",
        tmp_path / "rm.zarr",
        filter_key="train",
        obs_keys="object,robot0_eef_pos",
    )
    assert r.episodes == [2] and r.steps == 6
    before = snapshot(tmp_path / "rm.zarr")
    with pytest.raises(ForeignFormatError, match=r"key 'data/demo_1/obs/cube_pos' is missing"):
        import_file("robomimic", tmp_path / "low_dim.hdf5", tmp_path / "rm.zarr", obs_keys="object,cube_pos")
    assert snapshot(tmp_path / "rm.zarr") == before


def test_cli_import_export(source_store, tmp_path, capsys):
    root = tmp_path / "minari"
    assert (
        main(
            [
                "dataset",
                "export",
                "minari",
                str(source_store),
                "o2o/m-v0",
                "--minari-root",
                str(root),
                "--data-format",
                "arrow",
                "--source",
                "human",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["episodes"] == 3
    assert (
        main(
            [
                "dataset",
                "import",
                "minari",
                "o2o/m-v0",
                "--minari-root",
                str(root),
                "--to",
                str(tmp_path / "c.zarr"),
                "--episodes",
                "1:",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "imported 2 episodes" in out and "new dataset" in out
    assert main(["dataset", "info", str(tmp_path / "c.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["sources"]) == {"human"} and info["episodes"] == 2
    assert main(["dataset", "import", "d4rl", str(tmp_path / "nothing.hdf5"), "--to", str(tmp_path / "d.zarr")]) == 2
    assert "nothing.hdf5" in capsys.readouterr().err


@pytest.mark.slow  # over 10 s: outside the fast tier (pytest -m 'not slow'), in the full suite
def test_import_export_speed(tmp_path):
    """Figures for docs/results.md: The dataset. 200 episodes x 250 steps of a 17-D task through both formats."""
    rng = np.random.default_rng(3)
    space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
    schema = Schema.from_spaces(space, gym.spaces.Box(-1, 1, (6,), np.float32))
    with EpisodeStore.create(tmp_path / "big.zarr", schema) as store:
        store.append_many(
            [
                Episode(
                    rng.normal(size=(250, 17)).astype(np.float32),
                    rng.uniform(-1, 1, (250, 6)).astype(np.float32),
                    rng.normal(size=250),
                    np.zeros(250, bool),
                    np.eye(1, 250, 249, dtype=bool)[0],
                    rng.normal(size=17).astype(np.float32),
                    {"source": "random", "policy_id": "r"},
                )
                for _ in range(200)
            ]
        )
    figures = {}
    for fmt, out in (("d4rl", tmp_path / "big.hdf5"), ("minari", "o2o/big-v0")):
        opts = {"minari_root": tmp_path / "m"} if fmt == "minari" else {}
        t = time.perf_counter()
        export_store(fmt, tmp_path / "big.zarr", out, **opts)
        figures[f"{fmt} export steps/s"] = 50_000 / (time.perf_counter() - t)
        t = time.perf_counter()
        import_file(fmt, out, tmp_path / f"{fmt}.zarr", **opts)
        figures[f"{fmt} import steps/s"] = 50_000 / (time.perf_counter() - t)
    print(figures)
    assert all(v > 2_000 for v in figures.values()), figures  # a pathology check; the figures are printed
