"""A separate writer process for the store's crash, lock and concurrency tests.

Run as a script (the tests start it with ``subprocess``)::

    python store_writer.py append PATH [--count N]
    python store_writer.py hold PATH

``append`` opens PATH for writing (creating it with :func:`create_store` if it is
missing) and appends ``make_episode(i)`` for i = the committed count, count + 1, ...,
printing one flushed line per event:

    ready <pid> <episodes>     the writer is open (the lock is held)
    begin <i>                  append of episode i starts
    ack <i> <checksum>         append returned: episode i is committed

``hold`` opens PATH for writing, prints ``ready <pid> <episodes>`` and keeps the lock until
its stdin closes or a line arrives, then closes the store and prints ``closed``.
Both print ``locked <message>`` and exit with status 3 when another writer holds the lock.

The tests import this file too: :func:`make_episode` is the ground truth that every
episode read back is compared against. Every observation, action and reward is nonzero,
so a row that reads as the fill value (0) can never pass for written data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import gymnasium as gym
import numpy as np

from o2o.datasets import SOURCES, Episode, EpisodeStore, Schema, StoreLockedError

# Small chunks make an episode span several chunk files per array, so a kill can land
# between two chunk writes of the same append.
CHUNK_BYTES = 16 * 1024
JOINTS, TARGET, ACT = 24, 8, 4
LOCKED_EXIT = 3


def make_schema() -> Schema:
    obs = gym.spaces.Dict(
        {
            "joints": gym.spaces.Box(-2.0, 2.0, (JOINTS,), np.float32),
            "target": gym.spaces.Box(-2.0, 2.0, (TARGET,), np.float32),
        }
    )
    return Schema.from_spaces(obs, gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32))


def create_store(path) -> EpisodeStore:
    return EpisodeStore.create(path, make_schema(), env={"id": "writer-test"}, chunk_bytes=CHUNK_BYTES)


def _nonzero(rng: np.random.Generator, shape, low: float, high: float) -> np.ndarray:
    """Values in +-[low, high]: never zero, never outside +-high."""
    return (rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def make_episode(i: int) -> Episode:
    """Episode number ``i`` of a writer: a pure function of ``i`` (record included)."""
    rng = np.random.default_rng(1000 + i)
    T = int(rng.integers(150, 400))
    ending = i % 3  # terminal, timeout, neither
    terminals = np.zeros(T, bool)
    timeouts = np.zeros(T, bool)
    if ending == 0:
        terminals[-1] = True
    elif ending == 1:
        timeouts[-1] = True
    return Episode(
        observations={"joints": _nonzero(rng, (T, JOINTS), 0.1, 1.9), "target": _nonzero(rng, (T, TARGET), 0.1, 1.9)},
        actions=_nonzero(rng, (T, ACT), 0.05, 0.95),
        rewards=_nonzero(rng, (T,), 0.5, 1.5),
        terminals=terminals,
        timeouts=timeouts,
        final_observation={"joints": _nonzero(rng, (JOINTS,), 0.1, 1.9), "target": _nonzero(rng, (TARGET,), 0.1, 1.9)},
        provenance={"source": SOURCES[i % len(SOURCES)], "policy_id": f"writer-{i % 2}", "params": {"i": i}},
        interventions=rng.random(T) < 0.1,
        seed=i,
        success=(None, True, False)[i % 3],
        start_time=1.7e9 + i,
        end_time=1.7e9 + i + T * 0.05,
    )


def checksum(ep: Episode) -> str:
    """Digest of an episode's content, equal for a generated and a read-back episode."""
    h = hashlib.blake2b(digest_size=12)
    arrays = {f"obs/{k}": v for k, v in ep.observations.items()}
    arrays.update({f"final/{k}": v for k, v in ep.final_observation.items()})
    arrays.update(
        actions=ep.actions,
        rewards=ep.rewards,
        terminals=ep.terminals,
        timeouts=ep.timeouts,
        interventions=ep.interventions,
    )
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    record = {
        "seed": ep.seed,
        "success": ep.success,
        "times": [ep.start_time, ep.end_time],
        "source": ep.provenance["source"],
        "policy_id": ep.provenance["policy_id"],
    }
    h.update(json.dumps(record, sort_keys=True).encode())
    return h.hexdigest()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["append", "hold"])
    p.add_argument("path")
    p.add_argument("--count", type=int, default=None, help="stop after this many appends (default: never)")
    args = p.parse_args(argv)
    try:
        store = EpisodeStore.open(args.path, mode="a") if os.path.exists(args.path) else create_store(args.path)
    except StoreLockedError as e:
        _say(f"locked {e}")
        return LOCKED_EXIT
    _say(f"ready {os.getpid()} {store.num_episodes}")
    if args.mode == "hold":
        sys.stdin.readline()
        store.close()
        _say("closed")
        return 0
    i, done = store.num_episodes, 0
    while args.count is None or done < args.count:
        ep = make_episode(i)
        _say(f"begin {i}")
        (got,) = store.append_many([ep])
        assert got == i, (got, i)
        _say(f"ack {i} {checksum(ep)}")
        i, done = i + 1, done + 1
    store.close()
    _say("closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
