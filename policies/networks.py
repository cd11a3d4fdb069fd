"""Networks shared by every algorithm: MLPs, batched ensembles, actors and critics.

Ensembles (twin critics, dynamics models) hold their members' weights stacked in one
tensor and run as one batched matmul (``torch.baddbmm``), never a Python loop over
members: N critics cost about as much as one on a GPU, and far less than N on a CPU.

Actors work in the *normalised* action space [-1, 1]; the algorithm module maps actions
to and from env units, so the same actor serves every env.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Normal

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU}


def activation(name: str) -> type[nn.Module]:
    """The activation class called ``name`` (relu, gelu, tanh, silu, elu)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} not one of {sorted(_ACTIVATIONS)}") from None


def make_activation(name: str) -> nn.Module:
    """An activation module; ReLU in place: after a linear layer (or LayerNorm) nothing else needs
    the pre-activation, and skipping one allocation and pass per layer is ~10% of a CQL update on CPU."""
    return nn.ReLU(inplace=True) if name == "relu" else activation(name)()


def _float32(x: Tensor) -> bool:
    """Whether a network head must leave autocast to compute in float32 (only under autocast)."""
    return torch.is_autocast_enabled(x.device.type)


class HeadLinear(nn.Linear):
    """A network's output layer, computed in float32 even under mixed precision.

    Under bf16 autocast a plain Linear returns bfloat16, which holds ~3 significant digits:
    a Q-value of -130 would move in steps of 0.5-1, coarser than the TD errors it learns
    from. The head is one thin matmul, so running it in float32 costs next to nothing and
    every Q, V, action mean and log-std keeps float32 resolution. Same parameters and state
    dict as ``nn.Linear``; without autocast (export, float32 training) it is ``nn.Linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if _float32(x):
            with torch.autocast(x.device.type, enabled=False):
                return nn.functional.linear(x.float(), self.weight, self.bias)
        return super().forward(x)


def mlp(
    in_dim: int, out_dim: int, hidden: Sequence[int], act: str = "relu", layer_norm: bool = False, dropout: float = 0.0
) -> nn.Sequential:
    """Linear layers with ``act`` between them (optional LayerNorm and dropout after each hidden layer)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(make_activation(act))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    layers.append(HeadLinear(d, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied in one batched matmul.

    Input ``[n, B, in]`` (each member its own batch) or ``[B, in]`` (the same batch for
    every member); output ``[n, B, out]``. Initialised like ``nn.Linear`` per member.
    """

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.n, self.in_dim, self.out_dim = n, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            # Same input for every member: a broadcast view, still one batched matmul. (Going
            # through one [B, in] x [in, n*out] matmul instead leaves a transposed output whose
            # bias add runs outside autocast: 2.5x slower under bf16 on CPU.)
            x = x.expand(self.n, *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"n={self.n}, in={self.in_dim}, out={self.out_dim}"


class _Float32Out(torch.autograd.Function):
    """``bias + x @ weight`` batched over members: float32 result from low-precision ``x``, and
    the backward in ``x``'s precision like the layers below it. (Autograd through a float32
    matmul would build ``x``'s gradient in float32 and cast it down: for CQL's critic heads,
    2 x 7,936 rows, 4.2 ms per forward+backward against 2 ms this way on the 2-core CPU.)"""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, x.float(), weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        g = grad.to(x.dtype)
        gx = torch.bmm(g, weight.to(x.dtype).transpose(1, 2)) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(x.transpose(1, 2), g).to(weight.dtype) if ctx.needs_input_grad[1] else None
        gb = grad.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


class _EnsembleDot(torch.autograd.Function):
    """A one-output ensemble head (critics, values): ``bias + x @ weight`` with ``weight [n, in, 1]``,
    computed as the transposed product ``weight^T x^T`` ([n, 1, in] x [n, in, B]); float32 result.

    The same sums as ``baddbmm``, but on CPU a batched matmul with one output column runs far
    below a one-row one, and autograd's backward for it is worse (a one-column product for
    ``weight``'s gradient, a rank-1 product for ``x``'s): for CQL's critic heads (2 x 7,936 rows
    of 256) a forward+backward takes 1.4 ms here against 2.9 ms through ``baddbmm`` in float32,
    2.1 against 2.4 ms in bf16 (2-core CPU). Here ``x``'s gradient is a broadcast product (a
    rank-1 batched matmul in bf16, where that one is the faster), ``weight``'s a one-row
    product. Under autocast ``x`` is bf16: the backward runs in ``x``'s precision like the
    layers below it (see :class:`_Float32Out`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        xf = x if x.dtype == weight.dtype else x.to(weight.dtype)
        # [n, 1, B] viewed as [n, B, 1]: the same memory, contiguous.
        return torch.baddbmm(bias.transpose(1, 2), weight.transpose(1, 2), xf.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        g = grad.to(x.dtype)
        w = weight.to(x.dtype).transpose(1, 2)  # [n, 1, in]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(g, w) if x.element_size() < 4 else g * w
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(g.transpose(1, 2), x).transpose(1, 2).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            gb = grad.sum(1, keepdim=True)
        return gx, gw, gb


class EnsembleHead(EnsembleLinear):
    """:class:`EnsembleLinear` as an output layer: float32 output even under autocast (see
    :class:`HeadLinear`), its backward in the autocast precision; a one-output head (critics,
    values) through :class:`_EnsembleDot`."""

    def forward(self, x: Tensor) -> Tensor:
        low = _float32(x)
        if x.dim() == 2 and (low or self.out_dim == 1):
            x = x.expand(self.n, *x.shape)
        if self.out_dim == 1:
            with torch.autocast(x.device.type, enabled=False):
                return _EnsembleDot.apply(x, self.weight, self.bias)
        if low:
            with torch.autocast(x.device.type, enabled=False):
                return _Float32Out.apply(x, self.weight, self.bias)
        return super().forward(x)


class EnsembleMLP(nn.Module):
    """An MLP per ensemble member, all evaluated together: ``[B, in] or [n, B, in] -> [n, B, out]``."""

    def __init__(
        self, n: int, in_dim: int, out_dim: int, hidden: Sequence[int], act: str = "relu", layer_norm: bool = False
    ):
        super().__init__()
        self.n = n
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(h) if layer_norm else nn.Identity() for h in hidden)
        self.out = EnsembleHead(n, dims[-1], out_dim)
        self.act = make_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        for layer, norm in zip(self.hidden, self.norms):
            x = self.act(norm(layer(x)))
        return self.out(x)


class QEnsemble(nn.Module):
    """``n`` critics Q(s, a) in one batched call: ``(obs [B, O], act [B, A]) -> [n, B]``.

    ``obs``/``act`` may carry extra sample dims ``[B, K, ...]`` (K actions per state, as
    CQL needs), giving ``[n, B, K]``. Every member sees the same input.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        n: int = 2,
        act: str = "relu",
        layer_norm: bool = False,
    ):
        super().__init__()
        self.n = n
        self.net = EnsembleMLP(n, obs_dim + act_dim, 1, hidden, act, layer_norm)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        if x.dim() > 2:  # [B, K, D]: flatten the samples
            lead = x.shape[:-1]
            return self.net(x.reshape(-1, x.shape[-1])).reshape(self.n, *lead)
        return self.net(x).squeeze(-1)


class ValueMLP(nn.Module):
    """V(s): ``obs [B, O] -> [B]``."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), act: str = "relu", layer_norm: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, act, layer_norm)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).squeeze(-1)


@dataclass(frozen=True)
class ActorOutput:
    """A sampled action (normalised space), its log-probability and the deterministic action."""

    action: Tensor
    log_prob: Tensor
    mode: Tensor


def _tanh_log_det(u: Tensor) -> Tensor:
    # log(1 - tanh(u)^2), written stably: 2 * (log 2 - u - softplus(-2u)).
    return 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))


class TanhGaussianActor(nn.Module):
    """SAC's actor: a Gaussian in pre-tanh space squashed by tanh into [-1, 1].

    ``log_prob(obs, action)`` evaluates dataset actions (for AWR/AWAC/BC likelihoods):
    actions are clipped just inside (-1, 1) before ``atanh``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        act: str = "relu",
        layer_norm: bool = False,
        log_std_min: float = LOG_STD_MIN,
        log_std_max: float = LOG_STD_MAX,
    ):
        super().__init__()
        self.trunk = mlp(obs_dim, 2 * act_dim, hidden, act, layer_norm)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def _dist(self, obs: Tensor) -> tuple[Normal, Tensor]:
        mu, log_std = self.trunk(obs).chunk(2, dim=-1)
        log_std = log_std.clamp(self.log_std_min, self.log_std_max)
        return Normal(mu, log_std.exp()), mu

    def forward(self, obs: Tensor, deterministic: bool = False) -> ActorOutput:
        dist, mu = self._dist(obs)
        u = mu if deterministic else dist.rsample()
        log_prob = (dist.log_prob(u) - _tanh_log_det(u)).sum(-1)
        return ActorOutput(torch.tanh(u), log_prob, torch.tanh(mu))

    def sample_n(self, obs: Tensor, n: int) -> ActorOutput:
        """``n`` actions per state from one pass of the network: ``obs [B, O] -> action [B, n, A]``,
        ``log_prob [B, n]`` (CQL's proposals: the same as ``forward`` on ``n`` copies of ``obs``, n times cheaper)."""
        dist, mu = self._dist(obs)
        u = dist.rsample((n,))  # [n, B, A]
        log_prob = (dist.log_prob(u) - _tanh_log_det(u)).sum(-1)
        return ActorOutput(
            torch.tanh(u).transpose(0, 1), log_prob.transpose(0, 1), torch.tanh(mu).unsqueeze(1).expand(-1, n, -1)
        )

    def log_prob(self, obs: Tensor, action: Tensor, eps: float = 1e-6) -> Tensor:
        dist, _ = self._dist(obs)
        a = action.clamp(-1 + eps, 1 - eps)
        u = torch.atanh(a)
        return (dist.log_prob(u) - _tanh_log_det(u)).sum(-1)

    def act(self, obs: Tensor) -> Tensor:
        """The deterministic action tanh(mu) (what gets exported)."""
        return torch.tanh(self.trunk(obs)[..., : self.trunk[-1].out_features // 2])


class GaussianActor(nn.Module):
    """A Gaussian with mean tanh(f(s)) and a state-independent std (IQL's and AWAC's actor).

    Likelihoods of dataset actions need no ``atanh``, so actions at the bounds are fine.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        act: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
        init_log_std: float = 0.0,
    ):
        super().__init__()
        self.mean = mlp(obs_dim, act_dim, hidden, act, layer_norm, dropout)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def _dist(self, obs: Tensor) -> tuple[Normal, Tensor]:
        mu = torch.tanh(self.mean(obs))
        return Normal(mu, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()), mu

    def forward(self, obs: Tensor, deterministic: bool = False) -> ActorOutput:
        dist, mu = self._dist(obs)
        a = mu if deterministic else dist.rsample()
        return ActorOutput(a.clamp(-1.0, 1.0), dist.log_prob(a).sum(-1), mu)

    def sample_n(self, obs: Tensor, n: int) -> ActorOutput:
        """``n`` actions per state from one pass: ``obs [B, O] -> action [B, n, A]``, ``log_prob [B, n]``."""
        dist, mu = self._dist(obs)
        a = dist.rsample((n,))  # [n, B, A]
        return ActorOutput(
            a.clamp(-1.0, 1.0).transpose(0, 1),
            dist.log_prob(a).sum(-1).transpose(0, 1),
            mu.unsqueeze(1).expand(-1, n, -1),
        )

    def log_prob(self, obs: Tensor, action: Tensor) -> Tensor:
        dist, _ = self._dist(obs)
        return dist.log_prob(action).sum(-1)

    def act(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.mean(obs))


class DeterministicActor(nn.Module):
    """a = tanh(f(s)) in [-1, 1] (BC with an MSE loss, TD3-style actors)."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        act: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, act, layer_norm, dropout)

    def forward(self, obs: Tensor, deterministic: bool = True) -> ActorOutput:
        a = torch.tanh(self.net(obs))
        return ActorOutput(a, torch.zeros(a.shape[:-1], device=a.device, dtype=a.dtype), a)

    def act(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs))


ACTORS = {"tanh_gaussian": TanhGaussianActor, "gaussian": GaussianActor, "deterministic": DeterministicActor}


def make_actor(kind: str, obs_dim: int, act_dim: int, **kwargs) -> nn.Module:
    """An actor by kind: ``tanh_gaussian`` (SAC, CQL), ``gaussian`` (IQL, AWAC), ``deterministic`` (BC)."""
    try:
        cls = ACTORS[kind]
    except KeyError:
        raise ValueError(f"actor kind {kind!r} not one of {sorted(ACTORS)}") from None
    return cls(obs_dim, act_dim, **kwargs)


#: devices whose fused Adam kernel o2o uses (tested on CPU; the CUDA kernel is torch's reference one)
_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(params, lr: float, **kwargs) -> torch.optim.Adam:
    """``torch.optim.Adam`` with torch's fused kernel when every parameter is a floating-point tensor on
    a CPU or CUDA device (one kernel per step instead of ~7 passes over the parameters: 0.50 -> 0.18 ms
    for IQL's three optimisers on the 2-core CPU, bench/README.md); the default implementation otherwise.
    Same update rule either way (within float rounding)."""
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in _FUSED_ADAM_DEVICES for p in tensors)
    return torch.optim.Adam(params, lr=lr, **({"fused": True} if fused else {}), **kwargs)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) target + tau source``, in one fused call."""
    t = [p for p in target.parameters()]
    s = [p for p in source.parameters()]
    torch._foreach_lerp_(t, s, tau)


def compile_mlps(root: nn.Module, **kwargs) -> list[str]:
    """``torch.compile`` every outermost MLP under ``root`` (each :class:`EnsembleMLP` and
    ``nn.Sequential``) in place, through ``nn.Module.compile``: parameters and state-dict keys
    stay as they are, and every caller (``forward``, ``sample_n``, ``log_prob``...) gets the
    compiled trunk. Meant for GPUs (fewer kernel launches); on the 2-core CPU it does not pay
    (CQL float32 within noise, bf16 ~1.5x slower; bench/README.md). Returns the compiled names."""
    done: list[str] = []
    for name, m in root.named_modules():
        if isinstance(m, (EnsembleMLP, nn.Sequential)) and not any(name.startswith(d + ".") for d in done):
            m.compile(**kwargs)
            done.append(name)
    return done


def strip_compiled(root: nn.Module) -> nn.Module:
    """Undo :func:`compile_mlps` on ``root`` and its submodules: eager calls again. (A deepcopy
    is eager already: ``nn.Module`` does not copy the compiled wrapper.)"""
    for m in root.modules():
        m._compiled_call_impl = None
    return root
