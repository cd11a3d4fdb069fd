"""A local action server: observation in, guarded action out, over ZeroMQ REQ/REP.

For controllers that are not Python (C++, Rust, a PLC gateway...) and do not want to
embed onnxruntime: ``o2o serve export_dir=<export>`` runs a :class:`PolicyRuntime` behind
a ZeroMQ REP socket on localhost, and any ZeroMQ binding talks to it.

Wire format ``o2o-action/1``. Every request and every reply is a ZeroMQ message of
exactly two frames, ``[command, payload]``; numbers are little-endian.

=============  ======================================  ==================================================
request        payload                                 reply ``[b"ok", payload]``
=============  ======================================  ==================================================
``b"act"``     ``obs_dim`` float32 (the flat           uint32 guard flags, then ``act_dim`` float32
               observation, manifest layout order)     (the action to send, env units)
``b"reset"``   empty                                   empty (previous action := safe action,
                                                       latched watchdog cleared)
``b"info"``    empty                                   UTF-8 JSON: protocol, obs_dim, act_dim, keys,
                                                       bounds, control period, guard settings, flags
``b"manifest"`` empty                                  UTF-8 JSON: the export's manifest.json
=============  ======================================  ==================================================

An error (unknown command, payload of the wrong size) is answered ``[b"error", UTF-8
message]`` and the server keeps serving. Guard flags (bits): 1 clamped, 2 rate-limited,
4 non-finite observation, 8 non-finite action, 16 watchdog, 32 watchdog latched; any of
4..32 means the action is the safe action. A NaN in the observation is a valid request
(it gets the safe action), not an error.

The export is loaded by :class:`PolicyRuntime`, so the server refuses what the runtime
refuses: changed files, a ``manifest.json`` edited after export (the manifest is sealed into
the model) and, with ``key_file=PATH``, an export not signed with that key. Requests cannot
carry non-real observations: ``act`` payloads are decoded as little-endian float32 of the
exact size, so strings or complex numbers never reach the policy (NaN/inf do, and get the
safe action).

Clients must set a receive timeout (``ZMQ_RCVTIMEO``) shorter than their control period
and send their own safe action when it expires: REQ sockets then need to be closed and
re-opened (``ZMQ_REQ_RELAXED`` with ``ZMQ_REQ_CORRELATE`` avoids that). Only loopback
addresses are served unless ``allow_remote=True``: the protocol has no authentication.
"""

from __future__ import annotations

import json
import logging
import signal
import struct
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from o2o.deploy.runtime import Guard, ObservationError, PolicyRuntime

log = logging.getLogger(__name__)

PROTOCOL = "o2o-action/1"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ActionServer:
    """A :class:`PolicyRuntime` behind a ZeroMQ REP socket (see the module docstring for the wire format)."""

    def __init__(self, runtime: PolicyRuntime, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False):
        import zmq

        if host not in LOOPBACK and not allow_remote:
            raise ValueError(
                f"action server: host {host!r} is not a loopback address; the protocol has no "
                "authentication (pass allow_remote=true to serve other hosts anyway)"
            )
        self.runtime = runtime
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        addr = f"tcp://{'[' + host + ']' if ':' in host else host}"
        if host == "::1":
            self._sock.setsockopt(zmq.IPV6, 1)
        try:
            if int(port) == 0:
                port = self._sock.bind_to_random_port(addr)
            else:
                self._sock.bind(f"{addr}:{int(port)}")
        except zmq.ZMQError as e:
            self.close()
            raise OSError(f"action server: cannot bind {addr}:{port} ({e})") from None
        self.endpoint = f"{addr}:{int(port)}"
        self._stop = threading.Event()
        self.requests = 0
        self._act = struct.Struct(f"<{runtime.obs_dim}f")
        self._reply = struct.Struct(f"<I{runtime.act_dim}f")

    # ------------------------------------------------------------------ protocol
    def info(self) -> dict[str, Any]:
        """What ``b"info"`` answers."""
        rt = self.runtime
        return {
            "protocol": PROTOCOL,
            "obs_dim": rt.obs_dim,
            "act_dim": rt.act_dim,
            "obs_keys": rt.obs_keys,
            "obs_layout": rt.layout,
            "action_low": rt.low.tolist(),
            "action_high": rt.high.tolist(),
            "period_s": rt.period_s,
            "deadline_s": rt.deadline_s,
            "max_delta": None if rt.max_delta is None else rt.max_delta.tolist(),
            "safe_action": rt.safe_action.tolist(),
            "watchdog_latch": rt.watchdog_latch,
            "signed": rt.signed,
            "signature_checked": rt.signature_checked,
            "flags": {g.name: int(g) for g in Guard if g is not Guard.NONE},
        }

    def handle(self, frames: Sequence[bytes]) -> list[bytes]:
        """The reply frames for one request's frames."""
        if len(frames) != 2:
            return [b"error", f"a request has 2 frames [command, payload], got {len(frames)}".encode()]
        cmd, payload = bytes(frames[0]), bytes(frames[1])
        if cmd == b"act":
            if len(payload) != self._act.size:
                return [
                    b"error",
                    (
                        f"act: payload has {len(payload)} bytes, expected {self._act.size} "
                        f"({self.runtime.obs_dim} float32 little-endian: {self.runtime.obs_keys})"
                    ).encode(),
                ]
            obs = np.frombuffer(payload, dtype="<f4")
            try:
                result = self.runtime.step(obs)
            except ObservationError as e:
                return [b"error", f"act: {e}".encode()]
            return [b"ok", self._reply.pack(int(result.flags), *result.action.tolist())]
        if cmd == b"reset":
            self.runtime.reset()
            return [b"ok", b""]
        if cmd == b"info":
            return [b"ok", json.dumps(self.info()).encode()]
        if cmd == b"manifest":
            return [b"ok", json.dumps(self.runtime.manifest).encode()]
        return [b"error", f"unknown command {cmd[:32]!r}; commands: act, reset, info, manifest".encode()]

    # ------------------------------------------------------------------ serving
    def serve_forever(self, poll_ms: int = 100) -> None:
        """Answer requests until :meth:`stop` (checked every ``poll_ms``)."""
        import warnings

        import zmq

        from o2o.deploy.runtime import GuardWarning

        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        with warnings.catch_warnings():
            # Each reply carries its guard flags; per-step warnings would flood the server's log.
            # The first occurrence of each guard is logged, the counts when the server stops.
            warnings.simplefilter("ignore", GuardWarning)
            seen = set()
            while not self._stop.is_set():
                if not poller.poll(poll_ms):
                    continue
                frames = self._sock.recv_multipart()
                self.requests += 1
                reply = self.handle(frames)
                self._sock.send_multipart(reply)
                if reply[0] == b"ok" and bytes(frames[0]) == b"act":
                    flags = Guard(struct.unpack_from("<I", reply[1])[0])
                    for g in Guard:
                        if g and flags & g and g not in seen:
                            seen.add(g)
                            log.warning("action server: first %s guard event (request %d)", g.name, self.requests)

    def stop(self) -> None:
        """End :meth:`serve_forever` (from another thread or a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> "ActionServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- `o2o serve`
SERVE_KEYS = {
    "export_dir": "the export folder (required)",
    "host": "address to bind (default 127.0.0.1)",
    "port": "TCP port; 0 picks a free one (default 5555)",
    "safe_action": "list of numbers; default: the export's",
    "max_delta": "number or list; null disables; default: the export's",
    "deadline_s": "watchdog deadline; default: the export's, else the control period",
    "watchdog": "true/false (default true)",
    "watchdog_latch": "true/false (default false)",
    "allow_remote": "serve a non-loopback host (default false)",
    "threads": "onnxruntime threads (default 1)",
    "key_file": "this deployment's signing key: serve only an export signed with it (default: none, not checked)",
}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments of ``o2o serve``; values are JSON (``[0,0]``, ``null``, ``0.05``) or plain strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in SERVE_KEYS:
            known = ", ".join(f"{k} ({v})" for k, v in SERVE_KEYS.items())
            raise ValueError(f"o2o serve: bad argument {item!r}; expected key=value with key one of: {known}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    if "export_dir" not in out:
        raise ValueError("o2o serve: give the export folder: o2o serve export_dir=runs/pretrain/<run>/export/<name>")
    return out


def serve(args: dict[str, Any], out=sys.stdout) -> int:
    """Run the action server for ``o2o serve`` until SIGINT/SIGTERM; prints the endpoint first."""
    kwargs: dict[str, Any] = {}
    for key in ("safe_action", "max_delta", "deadline_s"):
        if key in args:
            kwargs[key] = args[key]
    key_file = args.get("key_file")
    runtime = PolicyRuntime(
        Path(str(args["export_dir"])),
        watchdog=bool(args.get("watchdog", True)),
        watchdog_latch=bool(args.get("watchdog_latch", False)),
        num_threads=int(args.get("threads", 1)),
        key_file=None if key_file in (None, "") else str(key_file),
        **kwargs,
    )
    with ActionServer(
        runtime, str(args.get("host", "127.0.0.1")), int(args.get("port", 5555)), bool(args.get("allow_remote", False))
    ) as server:

        def _stop(*_):
            server.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _stop)
        signature = (
            "signature checked"
            if runtime.signature_checked
            else "signed, signature not checked (no key_file)"
            if runtime.signed
            else "unsigned"
        )
        out.write(
            f"serving {args['export_dir']} ({runtime.manifest['policy'].get('algorithm')}, obs {runtime.obs_dim} "
            f"float32 -> action {runtime.act_dim} float32) on {server.endpoint}, protocol {PROTOCOL}; "
            f"manifest seal checked, {signature}\n"
        )
        out.flush()
        server.serve_forever()
        out.write(f"stopped after {server.requests} requests; guard counts {runtime.counts}\n")
        out.flush()
    return 0
