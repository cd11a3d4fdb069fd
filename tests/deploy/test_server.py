"""`o2o serve`: the action server in its own process (torch blocked), queried by a client that knows only
the documented wire format (ZeroMQ + struct, no o2o import) from another process."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from o2o.deploy.runtime import PolicyRuntime
from o2o.deploy.server import ActionServer, parse_overrides

# A controller written against the protocol only: no o2o, no numpy.
CLIENT = textwrap.dedent("""
    import json, struct, sys
    import zmq

    endpoint, obs_dim, act_dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    observations = json.loads(sys.stdin.read())
    sock = zmq.Context().socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 5000)  # a real controller falls back to its safe action on timeout
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    def call(cmd, payload=b""):
        sock.send_multipart([cmd, payload])
        status, body = sock.recv_multipart()
        return status.decode(), body

    out = {"info": json.loads(call(b"info")[1])}
    replies = []
    for obs in observations:
        status, body = call(b"act", struct.pack(f"<{obs_dim}f", *obs))
        flags, *action = struct.unpack(f"<I{act_dim}f", body)
        replies.append({"status": status, "flags": flags, "action": action})
    out["replies"] = replies
    out["reset"] = call(b"reset")[0]
    out["short"] = [s if s != "error" else "error: " + b.decode() for s, b in [call(b"act", b"\\0" * 8)]][0]
    out["unknown"] = call(b"fly")[1].decode()
    out["manifest_format"] = json.loads(call(b"manifest")[1])["format"]
    print(json.dumps(out))
""")


@pytest.fixture()
def server(maze_export, torch_blocker):
    """`python -m o2o.pipeline.cli serve` on a free port, torch blocked; yields (process, endpoint)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "o2o.pipeline.cli",
            "serve",
            f"export_dir={maze_export.out_dir}",
            "port=0",
            "max_delta=0.5",
        ],
        env=torch_blocker,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        pytest.fail(f"server did not start: {line!r} {proc.stderr.read()}")
    endpoint = line.split(" on ")[1].split(",")[0]
    yield proc, endpoint
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_action_server_answers_a_client_in_another_process(server, maze_export, recorded):
    proc, endpoint = server
    assert endpoint.startswith("tcp://127.0.0.1:")
    obs = recorded[:8].astype(np.float64).tolist()
    obs.append([float("nan")] * 6)
    client = subprocess.run(
        [sys.executable, "-c", CLIENT, endpoint, "6", "2"],
        input=json.dumps(obs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert client.returncode == 0, client.stderr
    out = json.loads(client.stdout)
    assert out["info"]["protocol"] == "o2o-action/1" and out["info"]["obs_keys"] == ["position", "velocity", "goal"]
    assert out["info"]["max_delta"] == [0.5, 0.5] and out["info"]["flags"]["NONFINITE_OBS"] == 4

    # The same guarded actions as an in-process runtime with the same settings.
    local = PolicyRuntime(maze_export.out_dir, max_delta=0.5)
    for o, reply in zip(recorded[:8], out["replies"][:8]):
        r = local.step(o)
        assert reply["status"] == "ok" and reply["flags"] == int(r.flags)
        np.testing.assert_allclose(reply["action"], r.action, rtol=0, atol=1e-6)
    assert out["replies"][8] == {"status": "ok", "flags": 4, "action": [0.0, 0.0]}
    assert out["reset"] == "ok"
    assert out["short"].startswith("error: act: payload has 8 bytes, expected 24 (6 float32 little-endian")
    assert "unknown command b'fly'" in out["unknown"]
    assert out["manifest_format"] == "o2o-export"

    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "stopped after 14 requests" in stdout and "'NONFINITE_OBS': 1" in stdout
    assert "Traceback" not in stderr


def test_serve_arguments_are_checked(maze_export):
    args = parse_overrides([f"export_dir={maze_export.out_dir}", "port=0", "max_delta=null", "safe_action=[0,0.1]"])
    assert args == {"export_dir": maze_export.out_dir, "port": 0, "max_delta": None, "safe_action": [0, 0.1]}
    with pytest.raises(ValueError, match="bad argument 'speed=3'; expected key=value with key one of: export_dir"):
        parse_overrides([f"export_dir={maze_export.out_dir}", "speed=3"])
    with pytest.raises(ValueError, match="give the export folder"):
        parse_overrides(["port=1"])


def test_the_server_refuses_a_remote_host_without_consent(maze_export):
    rt = PolicyRuntime(maze_export.out_dir)
    with pytest.raises(ValueError, match="not a loopback address"):
        ActionServer(rt, host="0.0.0.0")
    with ActionServer(rt, port=0) as srv:
        assert srv.handle([b"act"])[0] == b"error"
        obs = np.zeros(6, "<f4")
        flags, *action = struct.unpack("<I2f", srv.handle([b"act", obs.tobytes()])[1])
        assert flags == 0
        np.testing.assert_allclose(action, PolicyRuntime(maze_export.out_dir).act(obs), rtol=0, atol=1e-7)
