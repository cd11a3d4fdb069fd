"""Networks: batched ensembles equal their members run one by one; actors' likelihoods agree."""

from __future__ import annotations

import torch

from o2o.policies.networks import EnsembleMLP, GaussianActor, QEnsemble, TanhGaussianActor, ValueMLP, adam, soft_update


def test_ensemble_matches_members_run_separately():
    torch.manual_seed(0)
    ens = EnsembleMLP(3, 5, 2, hidden=[8, 8])
    x = torch.randn(4, 5)
    out = ens(x)
    assert out.shape == (3, 4, 2)
    for i in range(3):
        h = x
        for layer in ens.hidden:
            h = torch.relu(h @ layer.weight[i] + layer.bias[i])
        ref = h @ ens.out.weight[i] + ens.out.bias[i]
        torch.testing.assert_close(out[i], ref)
    # Per-member inputs [n, B, in] go through the same weights.
    xs = torch.randn(3, 4, 5)
    torch.testing.assert_close(ens(xs)[1], ens(xs[1])[1])


def test_q_ensemble_shapes_with_sampled_actions():
    q = QEnsemble(4, 2, hidden=[8], n=2)
    obs, act = torch.randn(6, 4), torch.randn(6, 2)
    assert q(obs, act).shape == (2, 6)
    many = q(obs.unsqueeze(1).expand(6, 3, 4), act.unsqueeze(1).expand(6, 3, 2))
    assert many.shape == (2, 6, 3)
    torch.testing.assert_close(many[:, :, 0], q(obs, act))


def test_tanh_gaussian_log_prob_matches_sampling_density():
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, hidden=[16])
    obs = torch.randn(5, 3)
    out = actor(obs)
    assert out.action.abs().max() < 1
    torch.testing.assert_close(actor.log_prob(obs, out.action), out.log_prob, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(actor.act(obs), out.mode)


def test_gaussian_actor_deterministic_is_mean():
    actor = GaussianActor(3, 2, hidden=[16])
    obs = torch.randn(5, 3)
    torch.testing.assert_close(actor(obs, deterministic=True).action, actor.act(obs))


def test_soft_update_moves_target_by_tau():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    soft_update(a, b, 0.25)
    torch.testing.assert_close(a.weight, 0.75 * before + 0.25 * b.weight)


def test_sample_n_draws_from_the_per_state_distribution():
    """``sample_n`` (one network pass, n draws) gives the density ``log_prob`` computes, per state."""
    torch.manual_seed(0)
    for actor in (TanhGaussianActor(4, 3, hidden=[16]), GaussianActor(4, 3, hidden=[16])):
        obs = torch.randn(5, 4)
        out = actor.sample_n(obs, 7)
        assert out.action.shape == (5, 7, 3) and out.log_prob.shape == (5, 7) and out.mode.shape == (5, 7, 3)
        assert out.action.abs().max() <= 1.0
        inside = out.action.abs().max(dim=-1).values < 0.999  # away from the clipped tanh edge
        ref = actor.log_prob(obs.unsqueeze(1).expand(5, 7, 4), out.action)
        torch.testing.assert_close(out.log_prob[inside], ref[inside], atol=1e-3, rtol=1e-4)
        # Different draws per sample, same mode for every sample of a state.
        assert not torch.allclose(out.action[:, 0], out.action[:, 1])
        torch.testing.assert_close(out.mode[:, 0], out.mode[:, 6])
        torch.testing.assert_close(out.mode[:, 0], actor(obs, deterministic=True).mode)


def test_heads_compute_in_float32_under_bf16_autocast():
    """Q, V and actor outputs stay float32 under bf16 autocast: the hidden layers run in bf16, the
    output layer in float32 on them (bf16 would round a Q of -130 to a multiple of 0.5 or 1)."""
    torch.manual_seed(0)
    obs, act = torch.randn(64, 5), torch.rand(64, 2) * 2 - 1
    q, v, pi = QEnsemble(5, 2, (32, 32)), ValueMLP(5, (32, 32)), TanhGaussianActor(5, 2, (32, 32))
    with torch.no_grad():  # outputs of a few hundred, where bf16's steps are coarse
        q.net.out.bias.fill_(-130.0)
        v.net[-1].bias.fill_(-130.0)
    with torch.autocast("cpu", torch.bfloat16):
        qa, va, mode = q(obs, act), v(obs), pi(obs, deterministic=True).mode
        hidden_q = q.net.act(q.net.hidden[1](q.net.act(q.net.hidden[0](torch.cat([obs, act], -1)))))
        hidden_v = v.net[:-1](obs)
    assert qa.dtype == va.dtype == mode.dtype == torch.float32
    assert hidden_q.dtype == hidden_v.dtype == torch.bfloat16  # the body did run in bf16
    expect_q = torch.baddbmm(q.net.out.bias, hidden_q.float().expand(2, -1, -1), q.net.out.weight).squeeze(-1)
    torch.testing.assert_close(qa, expect_q, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(
        va, torch.nn.functional.linear(hidden_v.float(), v.net[-1].weight, v.net[-1].bias).squeeze(-1)
    )
    assert len(torch.unique(qa)) > 100 and (qa - qa.round()).abs().max() > 0.05  # not on bf16's grid of 1 (or 0.5)
    # Without autocast nothing changes: the plain float32 network.
    torch.testing.assert_close(q(obs, act), q.net(torch.cat([obs, act], -1)).squeeze(-1))


def test_ensemble_head_gradients_under_bf16_match_autograd_through_the_float32_head():
    """The ensemble head's own backward (in bf16, like the layers below it) gives the gradients
    autograd gives through the float32 head, up to bf16 rounding of the input gradient."""
    torch.manual_seed(1)
    q = QEnsemble(5, 2, (32, 32))
    obs, act = torch.randn(64, 5), torch.rand(64, 2) * 2 - 1
    with torch.autocast("cpu", torch.bfloat16):
        h = q.net.act(q.net.hidden[1](q.net.act(q.net.hidden[0](torch.cat([obs, act], -1))))).detach()
    ref_h, h = h.clone().requires_grad_(True), h.clone().requires_grad_(True)
    target = torch.randn(2, 64, 1)
    with torch.autocast("cpu", torch.bfloat16):
        out = q.net.out(h)
    ((out - target) ** 2).mean().backward()
    got = (h.grad.clone(), q.net.out.weight.grad.clone(), q.net.out.bias.grad.clone())
    q.zero_grad()
    ref = torch.baddbmm(q.net.out.bias, ref_h.float(), q.net.out.weight)
    torch.testing.assert_close(out, ref)  # the same float32 values forward
    ((ref - target) ** 2).mean().backward()
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0].float(), ref_h.grad.float(), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(got[1], q.net.out.weight.grad, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(got[2], q.net.out.bias.grad)


def test_one_output_ensemble_head_equals_the_batched_matmul_and_its_autograd():
    """Critic/value heads (one output) run as the transposed product: same outputs and gradients as
    ``bias + x @ weight`` through autograd, for per-member and shared inputs, and with frozen weights
    (a target network) or an input that needs no gradient."""
    torch.manual_seed(2)
    head = QEnsemble(3, 2, (8,), n=3).net.out
    for shape in [(3, 40, 8), (40, 8)]:
        x = torch.randn(*shape).relu_().requires_grad_(True)
        out = head(x)
        assert out.shape == (3, 40, 1) and out.is_contiguous()
        ref = torch.baddbmm(head.bias, x.expand(3, 40, 8), head.weight)
        torch.testing.assert_close(out, ref)
        gy = torch.randn(3, 40, 1)
        got = torch.autograd.grad(out, (x, head.weight, head.bias), gy)
        want = torch.autograd.grad(ref, (x, head.weight, head.bias), gy)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    head.requires_grad_(False)
    x = torch.randn(3, 40, 8, requires_grad=True)
    (gx,) = torch.autograd.grad(head(x).sum(), x)
    torch.testing.assert_close(gx, head.weight.transpose(1, 2).expand(3, 40, 8))
    head.requires_grad_(True)
    head(torch.randn(3, 40, 8)).sum().backward()  # only the weights need gradients
    torch.testing.assert_close(head.bias.grad, torch.full((3, 1, 1), 40.0))


def test_adam_is_fused_on_cpu_and_steps_like_the_default_adam():
    torch.manual_seed(0)
    nets = [QEnsemble(5, 2, (16, 16), 2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    fused, plain = adam(nets[0].parameters(), lr=1e-2), torch.optim.Adam(nets[1].parameters(), lr=1e-2)
    assert fused.param_groups[0]["fused"] is True and not plain.param_groups[0]["fused"]
    for _ in range(20):
        obs, act = torch.randn(32, 5), torch.randn(32, 2)
        for net, opt in zip(nets, (fused, plain)):
            opt.zero_grad()
            net(obs, act).pow(2).mean().backward()
            opt.step()
    for a, b, a0 in zip(nets[0].parameters(), nets[1].parameters(), start):
        assert (a - a0).abs().max() > 1e-3  # 20 steps of lr 1e-2 moved every tensor
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adam_falls_back_where_no_fused_kernel_is_used():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3, device="meta"))]}]
    assert not adam(groups, lr=1e-3).param_groups[0]["fused"]
