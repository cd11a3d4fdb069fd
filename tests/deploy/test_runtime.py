"""The controller-side runtime: loading (hashes, self-test), guards, watchdog, fixed-rate loop."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest

from o2o.deploy.export import seal_export
from o2o.deploy.manifest import FORMAT_VERSION, ManifestError, write_manifest
from o2o.deploy.runtime import ControlLoop, Guard, GuardWarning, ObservationError, PolicyRuntime
from o2o.policies.algos.base import load_algorithm


class SlowRuntime(PolicyRuntime):
    """The real runtime around a policy made artificially slow (``delay_s`` added to each inference)."""

    delay_s = 0.0

    def _infer_one(self, obs):
        time.sleep(self.delay_s)
        return super()._infer_one(obs)


def reseal(folder, manifest) -> None:
    """What export does after changing a manifest (torch side): hash the files and seal it into the model again."""
    seal_export(folder, manifest, list(manifest["files"]))


# ---------------------------------------------------------------------- loading and acting
def test_runtime_reproduces_the_trained_policy(maze_export, recorded):
    rt = PolicyRuntime(maze_export.out_dir)
    policy = load_algorithm(maze_export.checkpoint)
    want = policy.act(recorded)
    got = np.stack([rt.act(o) for o in recorded])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert got.dtype == np.float32 and rt.counts == {g.name: 0 for g in Guard if g}
    np.testing.assert_allclose(rt.infer(recorded), want, rtol=0, atol=1e-5)
    assert rt.obs_keys == ["position", "velocity", "goal"] and rt.period_s == pytest.approx(0.05)
    assert rt.deadline_s == pytest.approx(0.05) and rt.max_delta is None
    np.testing.assert_array_equal(rt.safe_action, [0.0, 0.0])


def test_bad_observations_are_clear_errors(maze_export):
    rt = PolicyRuntime(maze_export.out_dir)
    with pytest.raises(ObservationError, match=r"shape \(5,\), the policy needs \(6,\) float32 .*'position'"):
        rt.act(np.zeros(5))
    with pytest.raises(ObservationError, match=r"lacks fields \['goal'\]"):
        rt.act({"position": [0, 0], "velocity": [0, 0]})
    with pytest.raises(ObservationError, match=r"field 'velocity' has shape \(3,\).*needs shape \(2,\)"):
        rt.act({"position": [0, 0], "velocity": [0, 0, 0], "goal": [1, 1]})
    with pytest.raises(ObservationError, match=r"has dtype <U1 \(strings\).*must be real numbers"):
        rt.act(["a", "b", "c", "d", "e", "f"])
    assert rt.steps == 0


def test_observations_that_are_not_real_numbers_are_refused_by_name(maze_export, recorded):
    """Strings would be parsed and complex numbers lose their imaginary part under a float32 cast: refused."""
    rt = PolicyRuntime(maze_export.out_dir)
    obs = recorded[0]
    flat = {  # input -> what the error must say
        "strings": (
            [f"{v:.3f}" for v in obs],
            r"observation has dtype <U\d+ \(strings\) \(value \[0\], field "
            r"'position', is a str: '",
        ),
        "one string": (
            [*obs[:3].tolist(), "0.5", *obs[4:].tolist()],
            r"\(value \[3\], field 'velocity', is a str: '0.5'\)",
        ),
        "None": (
            [*obs[:4].tolist(), None, obs[5]],
            r"dtype object \(Python objects\) \(value \[4\], field 'goal', "
            r"is a NoneType: None\)",
        ),
        "complex": (
            obs.astype(np.complex64),
            r"observation has dtype complex64 \(complex numbers\): observations "
            r"must be real numbers",
        ),
        "complex list": ([complex(v, 1.0) for v in obs], r"dtype complex128 \(complex numbers\) \(value \[0\]"),
        "bytes": (np.array([b"1"] * 6), r"dtype \|S1 \(bytes\)"),
        "dates": (np.array(["2026-01-01"] * 6, dtype="datetime64[D]"), r"dtype datetime64\[D\] \(dates\)"),
    }
    for name, (value, message) in flat.items():
        with pytest.raises(ObservationError, match=message):
            rt.step(value)
    named = {"position": obs[:2], "velocity": obs[2:4], "goal": obs[4:]}
    for value, message in (
        ([str(v) for v in obs[2:4]], r"<U\d+ \(strings\)"),
        (obs[2:4] + 1j, r"complex\d+ \(complex numbers\)"),
        ("0.1", r"<U3 \(strings\)"),
    ):
        with pytest.raises(
            ObservationError,
            match=rf"^observation field 'velocity' has dtype {message}.*: observations "
            r"must be real numbers \(bool, int or float\)$",
        ):
            rt.step({**named, "velocity": value})
    with pytest.raises(ObservationError, match=r"observation batch has dtype <U"):
        rt.infer(np.array([[str(v) for v in obs]]))
    assert rt.steps == 0  # nothing reached the policy
    # Real numbers of any kind act as their float32 values: ints, bools, float64, lists.
    ints = {"position": [1, 0], "velocity": np.array([0, 0], np.int64), "goal": [True, False]}
    want = rt.act(np.float32([1, 0, 0, 0, 1, 0]))
    np.testing.assert_array_equal(rt.act(ints), want)
    np.testing.assert_array_equal(rt.act([1, 0, 0, 0, 1, 0]), want)
    np.testing.assert_array_equal(rt.act(obs.astype(np.float64)), rt.act(obs))


# ---------------------------------------------------------------------- guards
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_observation_gives_the_safe_action_and_a_warning(maze_export, recorded, bad):
    rt = PolicyRuntime(maze_export.out_dir, safe_action=[0.25, -0.5])
    obs = recorded[0].copy()
    obs[3] = bad  # velocity[1]
    with pytest.warns(GuardWarning, match=r"non-finite observation in fields \['velocity'\]"):
        r = rt.step(obs)
    assert r.flags == Guard.NONFINITE_OBS and r.safe and r.raw_action is None
    np.testing.assert_array_equal(r.action, np.float32([0.25, -0.5]))
    assert rt.counts["NONFINITE_OBS"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rt.step(recorded[0]).flags == Guard.NONE  # the next good observation acts normally


def test_actions_are_clamped_to_the_bounds(sqrt_export):
    rt = PolicyRuntime(sqrt_export)  # action = 4 * sqrt(obs[:2]), bounds [-1, 1]
    r = rt.step([0.01, 0.25, 0.0])  # policy: [0.4, 2.0]
    np.testing.assert_allclose(r.raw_action, [0.4, 2.0], rtol=1e-6)
    assert r.flags == Guard.CLAMPED and not r.safe
    np.testing.assert_allclose(r.action, [0.4, 1.0], rtol=1e-6)
    assert rt.step([0.01, 0.01, 5.0]).flags == Guard.NONE
    both = PolicyRuntime(sqrt_export, max_delta=0.3).step([0.01, 0.25, 0.0])  # clamped to 1, then limited from 0
    assert both.flags == Guard.CLAMPED | Guard.RATE_LIMITED
    np.testing.assert_allclose(both.action, [0.3, 0.3], rtol=1e-6)


def test_non_finite_action_gives_the_safe_action(sqrt_export):
    rt = PolicyRuntime(sqrt_export, safe_action=[0.0, 0.5])
    with pytest.warns(GuardWarning, match="non-finite action"):
        r = rt.step([-1.0, 0.25, 0.0])  # sqrt(-1) = NaN
    assert r.flags == Guard.NONFINITE_ACTION and r.safe and np.isnan(r.raw_action[0])
    np.testing.assert_array_equal(r.action, [0.0, 0.5])


def test_rate_limit_bounds_every_change(maze_export, recorded):
    rt = PolicyRuntime(maze_export.out_dir, max_delta=[0.05, 0.1])
    free = PolicyRuntime(maze_export.out_dir)
    prev = rt.safe_action
    limited = 0
    for o in recorded[:60]:
        r = rt.step(o)
        step = np.abs(r.action - prev)
        assert np.all(step <= np.array([0.05, 0.1]) + 1e-6), step
        limited += bool(r.flags & Guard.RATE_LIMITED)
        if not r.flags & Guard.RATE_LIMITED:
            np.testing.assert_array_equal(r.action, free.act(o))
        prev = r.action
    assert limited > 10  # the recorded observations jump between episodes: the limit must bite
    rt.reset()  # the robot is at rest again: the first action is limited from the safe action
    a = rt.act(recorded[0])
    assert np.all(np.abs(a) <= np.array([0.05, 0.1]) + 1e-6)


def test_an_artificially_slow_policy_trips_the_watchdog(maze_export, recorded):
    rt = SlowRuntime(maze_export.out_dir)  # deadline: the control period, 50 ms
    assert rt.step(recorded[0]).flags == Guard.NONE
    rt.delay_s = 0.07
    with pytest.warns(GuardWarning, match=r"watchdog: inference took \d+\.\d+ ms > deadline 50\.00 ms"):
        r = rt.step(recorded[1])
    assert r.flags == Guard.WATCHDOG and r.safe and r.inference_s > 0.05
    np.testing.assert_array_equal(r.action, rt.safe_action)
    rt.delay_s = 0.0
    assert rt.step(recorded[2]).flags == Guard.NONE  # not latched: the next on-time inference acts


def test_a_latched_watchdog_holds_the_safe_action_until_reset(maze_export, recorded):
    rt = SlowRuntime(maze_export.out_dir, deadline_s=0.01, watchdog_latch=True, safe_action=[0.1, 0.1])
    rt.delay_s = 0.02
    with pytest.warns(GuardWarning, match="latched until reset"):
        assert rt.step(recorded[0]).flags == Guard.WATCHDOG
    rt.delay_s = 0.0
    for o in recorded[1:4]:
        r = rt.step(o)
        assert r.flags == Guard.LATCHED and rt.tripped
        np.testing.assert_array_equal(r.action, np.float32([0.1, 0.1]))
    rt.reset()
    assert rt.step(recorded[4]).flags == Guard.NONE and not rt.tripped
    assert rt.counts["WATCHDOG"] == 1 and rt.counts["LATCHED"] == 3


def test_a_deadline_shorter_than_real_inference_trips_the_watchdog(maze_export, recorded):
    rt = PolicyRuntime(maze_export.out_dir, deadline_s=1e-9)
    with pytest.warns(GuardWarning, match="watchdog"):
        assert rt.step(recorded[0]).flags == Guard.WATCHDOG
    off = PolicyRuntime(maze_export.out_dir, deadline_s=1e-9, watchdog=False)
    assert off.step(recorded[0]).flags == Guard.NONE and off.deadline_s is None


def test_bad_guard_settings_are_refused(maze_export):
    with pytest.raises(ValueError, match=r"safe_action \[2.0, 0.0\] lies outside the action bounds at dims \[0\]"):
        PolicyRuntime(maze_export.out_dir, safe_action=[2.0, 0.0])
    with pytest.raises(ValueError, match="safe_action: expected a number or 2 values"):
        PolicyRuntime(maze_export.out_dir, safe_action=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="max_delta must be finite and > 0"):
        PolicyRuntime(maze_export.out_dir, max_delta=0.0)
    with pytest.raises(ValueError, match="deadline_s must be > 0"):
        PolicyRuntime(maze_export.out_dir, deadline_s=-1)


def test_guard_defaults_come_from_the_manifest(export_copy):
    m = json.loads((export_copy / "manifest.json").read_text())
    m["runtime"] = {"safe_action": [0.0, 0.3], "max_delta": 0.2, "deadline_s": 0.02}
    reseal(export_copy, m)  # an export made with these defaults (an edited manifest is refused: test_manifest_seal)
    rt = PolicyRuntime(export_copy)
    assert rt.safe_action.tolist() == [0.0, 0.3] and rt.max_delta.tolist() == [0.2, 0.2] and rt.deadline_s == 0.02
    assert PolicyRuntime(export_copy, max_delta=None).max_delta is None


# ---------------------------------------------------------------------- refusing a tampered export
def test_a_modified_onnx_file_is_refused(export_copy):
    data = bytearray((export_copy / "policy.onnx").read_bytes())
    data[-10] ^= 0x01
    (export_copy / "policy.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"file 'policy.onnx' sha256 [0-9a-f]{16}\.\.\. != manifest's"):
        PolicyRuntime(export_copy)


@pytest.mark.parametrize("name", ["policy.pt", "reference.npz"])
def test_every_listed_file_is_checked(export_copy, name):
    with open(export_copy / name, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=f"file '{name}' has .* bytes, the manifest says"):
        PolicyRuntime(export_copy)
    (export_copy / name).unlink()
    with pytest.raises(ManifestError, match=f"file '{name}' listed in the manifest is missing"):
        PolicyRuntime(export_copy)


def test_a_manifest_that_is_not_an_export_is_refused(export_copy, tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        PolicyRuntime(tmp_path)
    (export_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        PolicyRuntime(export_copy)
    (export_copy / "manifest.json").write_text(json.dumps({"format": "o2o-export", "format_version": FORMAT_VERSION}))
    with pytest.raises(ManifestError, match=r"manifest lacks sections \['created', 'policy'"):
        PolicyRuntime(export_copy)


def test_a_wrong_layout_in_the_manifest_is_refused(export_copy):
    m = json.loads((export_copy / "manifest.json").read_text())
    m["observation"]["layout"][1]["shape"] = [3]
    write_manifest(export_copy, m)
    with pytest.raises(ManifestError, match=r"layout\[1\] \('velocity'\) spans \[2, 4\), expected \[2, 5\)"):
        PolicyRuntime(export_copy)


def test_the_self_test_refuses_a_model_that_does_not_reproduce_its_reference(export_copy):
    with np.load(export_copy / "reference.npz") as d:
        obs, act = d["observations"], d["actions"]
    np.savez(export_copy / "reference.npz", observations=obs, actions=act + 1e-3)
    m = json.loads((export_copy / "manifest.json").read_text())
    reseal(export_copy, m)  # consistent hashes and seal: only the self-test can tell
    with pytest.raises(ManifestError, match=r"self-test failed: .* max abs diff 0\.001 > 1e-05"):
        PolicyRuntime(export_copy)
    PolicyRuntime(export_copy, self_test=False)


# ---------------------------------------------------------------------- fixed-rate loop
def test_control_loop_keeps_a_fixed_rate(maze_export, recorded):
    rt = PolicyRuntime(maze_export.out_dir)
    sent: list[float] = []
    k = iter(range(10**6))
    loop = ControlLoop(
        rt, lambda: recorded[next(k) % len(recorded)], lambda a, r: sent.append(time.perf_counter()), rate_hz=100
    )
    report = loop.run(steps=20)
    gaps = np.diff(sent)
    assert report.steps == 20 and len(sent) == 20
    assert 0.19 <= report.elapsed_s < 0.4, report
    assert abs(np.median(gaps) - 0.01) < 0.002, gaps
    assert report.period_s == 0.01 and report.inference_median_s < 0.01


def test_control_loop_counts_overruns_of_a_slow_policy(maze_export, recorded):
    rt = SlowRuntime(maze_export.out_dir, deadline_s=1.0)
    rt.delay_s = 0.025
    loop = ControlLoop(rt, lambda: recorded[0], lambda a, r: None, rate_hz=100)
    report = loop.run(steps=6)
    assert report.steps == 6 and report.overruns == 5 and report.missed_ticks >= 5
    assert report.guards == {}  # slow for the loop, yet within the runtime's own deadline
    assert report.elapsed_s >= 6 * 0.025  # the whole run, not the time since the grid was last re-anchored


def test_control_loop_stops_on_until_and_needs_an_end(maze_export, recorded):
    rt = PolicyRuntime(maze_export.out_dir)
    sent = []
    loop = ControlLoop(rt, lambda: recorded[0], lambda a, r: sent.append(a), realtime=False)
    assert loop.run(until=lambda: len(sent) >= 7).steps == 7
    with pytest.raises(ValueError, match="give steps, until, or both"):
        loop.run()
