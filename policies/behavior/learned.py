"""Drive an env with a trained policy: a torch module, a TorchScript file, an o2o export (through the
runtime's checks), a bare ONNX file or a callable.

Every backend is reduced to one function ``forward(obs_batch [1, obs_dim] float32) ->
actions [1, act_dim]``; exploration noise, scaling to env units and clipping are shared.
Lightning checkpoints (loaded with ``torch.load(weights_only=True)``) plug in later by
rebuilding the actor ``nn.Module`` and passing it to :class:`LearnedPolicy` directly.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from o2o.core.hashing import sha256_file
from o2o.deploy.manifest import MANIFEST_NAME
from o2o.deploy.runtime import PolicyRuntime
from o2o.policies.behavior.base import BehaviorPolicy, Provenance
from o2o.policies.behavior.random_policy import check_bounded_box
from o2o.policies.data import action_from_unit_np

#: ``unit``: the network outputs [-1, 1] (e.g. a tanh actor), mapped affinely onto
#: [low, high]; ``env``: the network already outputs env units (only clipped).
ACTION_SCALES = ("unit", "env")
EXPLORATIONS = ("none", "gaussian", "epsilon")

Forward = Callable[[np.ndarray], Any]


def weights_hash(module: torch.nn.Module) -> str:
    """Short content hash (sha256[:12]) of a module's state_dict: names, dtypes, shapes, bytes.

    Buffers count too (observation normalisers, batch-norm statistics change actions).
    The same weights give the same hash whether they come from a live module or a
    TorchScript file.
    """
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            # Viewing as bytes works for every dtype (bfloat16 has no numpy equivalent).
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()[:12]


def file_hash(path: str | Path) -> str:
    """Short content hash (sha256[:12]) of a file, e.g. an ONNX export."""
    return sha256_file(path)[:12]


def torch_forward(module: torch.nn.Module) -> Forward:
    """Wrap a module as a numpy forward function run under ``torch.no_grad()``.

    The module is put in eval mode (dropout/batch-norm must not act while collecting).
    Inputs go to the module's device and floating dtype. Torch's global thread count is
    left alone: a collector running many envs should call ``torch.set_num_threads(1)``.
    """
    module.eval()
    param = next((p for p in list(module.parameters()) + list(module.buffers()) if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32

    def forward(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(obs).to(device=device, dtype=dtype))
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"learned policy module returned {type(out).__name__}; it must return one action "
                "tensor [B, act_dim] (wrap actors that return tuples in a deterministic head)"
            )
        return out.detach().to("cpu", torch.float32).numpy()

    return forward


class LearnedPolicy(BehaviorPolicy):
    """A trained policy acting in an env, with optional exploration.

    Args:
        policy: an ``nn.Module`` mapping an obs tensor [B, obs_dim] float32 to actions
            [B, act_dim], or any callable doing the same on numpy arrays.
        action_space: the env's Box action space; actions are always clipped to it.
        action_scale: ``"unit"`` (outputs in [-1, 1], mapped onto [low, high]) or
            ``"env"`` (outputs already in env units). No default: guessing wrong silently
            rescales every action.
        policy_id: name stored in the provenance.
        policy_version: defaults to :func:`weights_hash` for modules; required for a
            plain callable (there is nothing to hash).
        exploration: ``"none"``, ``"gaussian"`` (add ``noise_std`` x half the action range
            per dim, or x 1 where a dim is unbounded) or ``"epsilon"`` (with probability
            ``epsilon`` take a uniform random action).
        seed: seeds the exploration noise; :meth:`reset` with a seed restarts it.
    """

    def __init__(
        self,
        policy: torch.nn.Module | Forward,
        action_space: gym.spaces.Box,
        *,
        action_scale: str,
        policy_id: str = "learned",
        policy_version: str | None = None,
        exploration: str = "none",
        noise_std: float = 0.1,
        epsilon: float = 0.1,
        seed: int | None = None,
    ):
        where = f"LearnedPolicy {policy_id!r}"
        if not isinstance(action_space, gym.spaces.Box):
            raise TypeError(f"{where}: needs a Box action space, got {type(action_space).__name__}")
        if action_scale not in ACTION_SCALES:
            raise ValueError(f"{where}: action_scale {action_scale!r} is not one of {ACTION_SCALES}")
        if exploration not in EXPLORATIONS:
            raise ValueError(f"{where}: exploration {exploration!r} is not one of {EXPLORATIONS}")
        if not (np.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"{where}: noise_std must be a finite number >= 0, got {noise_std}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"{where}: epsilon must be in [0, 1], got {epsilon}")
        if action_scale == "unit" or exploration == "epsilon":
            check_bounded_box(action_space, f"{where} (action_scale={action_scale}, exploration={exploration})")

        if isinstance(policy, torch.nn.Module):
            self._forward = torch_forward(policy)
            policy_version = policy_version or weights_hash(policy)
        elif callable(policy):
            if policy_version is None:
                raise ValueError(f"{where}: a plain callable has no weights to hash; pass policy_version")
            self._forward = policy
        else:
            raise TypeError(f"{where}: policy must be an nn.Module or a callable, got {type(policy).__name__}")

        self.action_space = action_space
        self.action_scale = action_scale
        self.policy_id = policy_id
        self.policy_version = policy_version
        self.exploration = exploration
        self.noise_std = float(noise_std)
        self.epsilon = float(epsilon)
        self._low = np.asarray(action_space.low, dtype=np.float64)
        self._high = np.asarray(action_space.high, dtype=np.float64)
        bounded = np.isfinite(self._low) & np.isfinite(self._high)
        # Noise is relative to the action range so one noise_std means the same on every env.
        self._noise_scale = np.where(bounded, (self._high - self._low) / 2.0, 1.0)
        self._rng = np.random.default_rng(seed)

    # -- constructors from files ---------------------------------------------------------

    @classmethod
    def from_onnx(
        cls, path: str | Path, action_space: gym.spaces.Box, *, num_threads: int = 1, **kwargs: Any
    ) -> "LearnedPolicy":
        """Load an ONNX policy with onnxruntime (CPU); version = hash of the ONNX file.

        An o2o export (the folder ``o2o export`` wrote, or the ``.onnx`` file in it) loads
        through :class:`~o2o.deploy.runtime.PolicyRuntime`, as on a robot: the manifest, every
        file's SHA-256 and the seal are checked and the self-test is run, so a modified export
        is refused. Its graph outputs env units (normalisation and scaling inside), so
        ``action_scale`` is set to ``env``; the runtime's guards (watchdog, rate limit) are for
        controllers and do not act here: the actions are the policy's own, like any backend's.

        A bare ``.onnx`` file, with no ``manifest.json`` beside it (a model exported by other
        tools, or by hand), is loaded as it is: there is nothing to check it against. It must
        have one input, obs [B, obs_dim] float32, and return the action as its first output.

        One thread by default: a single observation per call gains nothing from a thread pool,
        and collectors run several envs side by side. ``kwargs`` go to the constructor
        (``action_scale`` is required for a bare file); ``policy_id`` defaults to the file's
        stem (the folder's name for an export folder).
        """
        path = Path(path)
        if path.is_dir() or (_existing(path).parent / MANIFEST_NAME).is_file():
            return cls._from_export(path, action_space, num_threads, **kwargs)

        import onnxruntime as ort  # only this backend needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"ONNX policy {path}: expected one input (obs), got {[i.name for i in inputs]}")
        input_name = inputs[0].name

        def forward(obs: np.ndarray) -> np.ndarray:
            return session.run(None, {input_name: obs})[0]

        kwargs.setdefault("policy_id", path.stem)
        kwargs.setdefault("policy_version", file_hash(path))
        return cls(forward, action_space, **kwargs)

    @classmethod
    def _from_export(cls, path: Path, action_space: gym.spaces.Box, num_threads: int, **kwargs: Any) -> "LearnedPolicy":
        folder = path if path.is_dir() else path.parent
        runtime = PolicyRuntime(folder, num_threads=num_threads, watchdog=False)  # ManifestError if not trusted
        onnx_name = runtime.manifest["onnx"]["file"]
        if path != folder and path.name != onnx_name:
            raise ValueError(
                f"ONNX policy {path}: it lies in the o2o export {str(folder)!r} but is not its model "
                f"{onnx_name!r}; pass the export folder"
            )
        kwargs["action_scale"] = "env"
        kwargs.setdefault("policy_id", path.stem if path != folder else folder.name)
        # The hash the manifest records, which loading checked against the bytes it runs.
        kwargs.setdefault("policy_version", runtime.manifest["files"][onnx_name]["sha256"][:12])
        return cls(runtime.infer, action_space, **kwargs)

    @classmethod
    def from_torchscript(cls, path: str | Path, action_space: gym.spaces.Box, **kwargs: Any) -> "LearnedPolicy":
        """Load a TorchScript module (``torch.jit.save``) onto the CPU; version = weights hash.

        ``kwargs`` go to the constructor (``action_scale`` is required); ``policy_id``
        defaults to the file's stem.
        """
        path = _existing(path)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream but is one of o2o's export formats.
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.*deprecated", category=DeprecationWarning
                )
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise ValueError(
                f"checkpoint {path}: not a TorchScript module ({type(e).__name__}: {e}). "
                "Behaviour policies load TorchScript (.pt/.ckpt) or ONNX (.onnx) exports; a raw "
                "Lightning/state_dict checkpoint must be exported first"
            ) from e
        kwargs.setdefault("policy_id", path.stem)
        return cls(module, action_space, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, action_space: gym.spaces.Box, **kwargs: Any) -> "LearnedPolicy":
        """Load a ``.ckpt``: an o2o training checkpoint (``o2o pretrain``), else a TorchScript file.

        An o2o checkpoint is read with ``torch.load(weights_only=True)`` (no code is
        unpickled) and rebuilt as its deterministic policy, which already outputs env units
        (normalisation and scaling inside), so ``action_scale`` is set to ``env``.
        """
        path = _existing(path)
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # TorchScript archives are zip files torch.load refuses: try that format
            ckpt = None
        if not (isinstance(ckpt, dict) and "o2o" in ckpt):
            return cls.from_torchscript(path, action_space, **kwargs)
        from o2o.policies.algos.base import load_algorithm  # training code only for this format

        module = load_algorithm(str(path)).policy()
        kwargs["action_scale"] = "env"
        kwargs.setdefault("policy_id", path.stem)
        return cls(module, action_space, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, action_space: gym.spaces.Box, **kwargs: Any) -> "LearnedPolicy":
        """Load by suffix: ``.onnx`` -> :meth:`from_onnx`; ``.pt`` -> :meth:`from_torchscript`;
        ``.ckpt`` -> :meth:`from_checkpoint` (o2o training checkpoints, or TorchScript); a folder
        (an o2o export) -> :meth:`from_onnx`."""
        if Path(path).is_dir():
            return cls.from_onnx(path, action_space, **kwargs)
        suffix = Path(path).suffix.lower()
        loader = FILE_LOADERS.get(suffix)
        if loader is None:
            raise ValueError(
                f"checkpoint {path}: unsupported format {suffix or '(no suffix)'!r}; supported: {sorted(FILE_LOADERS)}"
            )
        return getattr(cls, loader)(path, action_space, **kwargs)

    # -- BehaviorPolicy ------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; a given ``seed`` restarts the exploration noise stream."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The policy's action for one flat observation, with exploration, clipped to the space."""
        batch = np.ascontiguousarray(np.asarray(obs, dtype=np.float32).reshape(1, -1))
        raw = np.asarray(self._forward(batch), dtype=np.float64)
        if raw.size != int(np.prod(self.action_space.shape)):
            raise ValueError(
                f"learned policy {self.policy_id!r}: output shape {raw.shape} does not fit action space "
                f"shape {self.action_space.shape} (obs shape {np.shape(obs)})"
            )
        action = raw.reshape(self.action_space.shape)
        if not np.all(np.isfinite(action)):
            raise FloatingPointError(
                f"learned policy {self.policy_id!r} (version {self.policy_version}) produced a non-finite "
                f"action {action} for obs {obs}"
            )
        if self.action_scale == "unit":
            action = action_from_unit_np(action, self._low, self._high)
        if self.exploration == "gaussian":
            action = action + self.noise_std * self._noise_scale * self._rng.standard_normal(action.shape)
        elif self.exploration == "epsilon":
            # Draw both every step so the stream position never depends on the branch taken.
            take_random, uniform = self._rng.random(), self._rng.uniform(self._low, self._high)
            if take_random < self.epsilon:
                action = uniform
        return np.clip(action, self._low, self._high).astype(self.action_space.dtype)

    @property
    def exploration_params(self) -> dict[str, Any]:
        """The exploration settings in effect (stored as provenance params)."""
        params: dict[str, Any] = {"exploration": self.exploration}
        if self.exploration == "gaussian":
            params["noise_std"] = self.noise_std
        elif self.exploration == "epsilon":
            params["epsilon"] = self.epsilon
        return params

    @property
    def provenance(self) -> Provenance:
        """Source ``learned``, the policy id, its content hash and the exploration settings."""
        return Provenance("learned", self.policy_id, self.policy_version, self.exploration_params)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy checkpoint {path} does not exist")
    return path


#: Checkpoint suffix -> name of the LearnedPolicy constructor that loads it; a new
#: export format is one classmethod plus one entry here.
FILE_LOADERS: dict[str, str] = {
    ".onnx": "from_onnx",
    ".pt": "from_torchscript",
    ".ckpt": "from_checkpoint",
}
