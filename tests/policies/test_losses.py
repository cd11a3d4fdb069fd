"""The pure loss functions against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from o2o.policies.algos import losses as L


def test_expectile_loss_weights_positive_residuals_by_tau():
    # diff = Q - V: +2 weighs tau, -1 weighs 1 - tau.  tau=0.7: (0.7*4 + 0.3*1) / 2 = 1.55
    diff = torch.tensor([2.0, -1.0])
    assert L.expectile_loss(diff, 0.7).item() == pytest.approx(1.55)
    # tau = 0.5 is half the MSE.
    assert L.expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1) / 2)


def test_expectile_minimiser_is_an_upper_expectile():
    # The minimiser v of E[|tau - 1(x<v)| (x - v)^2] over x in {0, 1} solves tau(1-v) = (1-tau)v: v = tau.
    x = torch.tensor([0.0, 1.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(500):
        opt.zero_grad()
        L.expectile_loss(x - v, 0.9).backward()
        opt.step()
    assert v.item() == pytest.approx(0.9, abs=1e-3)


def test_awr_weights_exponentiate_and_clip():
    adv = torch.tensor([0.0, 1.0, 10.0], requires_grad=True)
    w = L.awr_weights(adv, beta=3.0, max_weight=100.0)
    assert w.tolist() == pytest.approx([1.0, math.exp(3.0), 100.0])
    assert not w.requires_grad


def test_weighted_nll():
    logp = torch.tensor([-1.0, -2.0])
    w = torch.tensor([2.0, 0.5])
    assert L.weighted_nll(logp, w).item() == pytest.approx(-(2 * -1 + 0.5 * -2) / 2)


def test_td_target_bootstraps_on_timeouts_not_terminals():
    r = torch.tensor([1.0, 1.0])
    v = torch.tensor([10.0, 10.0])
    term = torch.tensor([0.0, 1.0])
    assert L.td_target(r, v, term, 0.9).tolist() == pytest.approx([10.0, 1.0])


def test_critic_regression_sums_members():
    q = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # 2 members, batch 2
    target = torch.tensor([1.0, 0.0])
    # member 0: ((0)^2 + (2)^2)/2 = 2; member 1: (1 + 0)/2 = 0.5
    assert L.critic_regression(q, target).item() == pytest.approx(2.5)


def test_cql_logsumexp_and_penalty():
    # One member, one state, K=1 sample per proposal, 1-D actions (uniform density 0.5).
    q_u, q_pi, q_npi = torch.tensor([[[1.0]]]), torch.tensor([[[2.0]]]), torch.tensor([[[0.0]]])
    lp, lpn = torch.tensor([[0.5]]), torch.tensor([[-0.5]])
    soft = L.cql_logsumexp(q_u, q_pi, lp, q_npi, lpn, act_dim=1)
    expected = math.log(math.exp(1 - math.log(0.5)) + math.exp(2 - 0.5) + math.exp(0 + 0.5))
    assert soft.item() == pytest.approx(expected, rel=1e-6)
    q_data = torch.tensor([[1.5]])
    assert L.cql_penalty_per_member(soft, q_data).tolist() == pytest.approx([expected - 1.5], rel=1e-6)
    # Temperature T: T * logsumexp(x / T).
    soft_t = L.cql_logsumexp(q_u, q_pi, lp, q_npi, lpn, act_dim=1, temperature=2.0)
    xs = [1 - math.log(0.5), 2 - 0.5, 0 + 0.5]
    assert soft_t.item() == pytest.approx(2 * math.log(sum(math.exp(x / 2) for x in xs)), rel=1e-6)


def test_cql_regularizer_fixed_and_lagrangian():
    gap = torch.tensor([1.0, 3.0], requires_grad=True)
    reg, weight = L.cql_regularizer(gap, cql_alpha=5.0)
    assert reg.item() == pytest.approx(20.0) and weight.item() == 5.0
    log_ap = torch.tensor(math.log(2.0), requires_grad=True)
    reg, weight = L.cql_regularizer(gap, 5.0, log_ap, target_gap=0.5)
    assert reg.item() == pytest.approx(2.0 * (0.5 + 2.5)) and weight.item() == pytest.approx(2.0)
    reg.backward()  # the critics' loss moves the critics, not alpha' (cql_lagrange_loss does)
    assert gap.grad.tolist() == pytest.approx([2.0, 2.0]) and log_ap.grad is None


def test_calql_bound_rate_counts_policy_values_below_the_return():
    q_pi, q_next = torch.tensor([[[0.0], [5.0]]]), torch.tensor([[[2.0], [1.0]]])  # [n=1, B=2, K=1]
    # below the bound: q_pi 0 < 1 and q_next 1 < 3, not 5 >= 3 nor 2 >= 1.
    assert L.calql_bound_rate(q_pi, q_next, torch.tensor([1.0, 3.0])).item() == 0.5


def test_cql_lagrange_raises_alpha_when_gap_exceeds_target():
    log_ap = torch.zeros((), requires_grad=True)
    L.cql_lagrange_loss(log_ap, torch.tensor([12.0, 14.0]), target_gap=10.0).backward()
    assert log_ap.grad.item() == pytest.approx(-3.0)  # -(1 * (13 - 10)): descending raises alpha'


def test_sac_losses():
    q = torch.tensor([1.0, 3.0])
    logp = torch.tensor([-1.0, -3.0])
    assert L.sac_actor_loss(q, logp, 0.5).item() == pytest.approx(((0.5 * -1 - 1) + (0.5 * -3 - 3)) / 2)
    log_alpha = torch.zeros((), requires_grad=True)
    L.entropy_alpha_loss(log_alpha, logp, target_entropy=-1.0).backward()
    # d/dlog_alpha of -mean(log_alpha * (logp + H)) = -mean(logp + H) = -(-2 + -4)/2 = 3
    assert log_alpha.grad.item() == pytest.approx(3.0)
    qn = torch.tensor([[1.0, 5.0], [2.0, 4.0]])
    assert L.soft_value(qn, torch.tensor([0.0, 2.0]), 0.5).tolist() == pytest.approx([1.0, 3.0])


def test_gaussian_nll_and_bc_mse():
    mean, log_std, target = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, math.log(2.0)]]), torch.tensor([[1.0, 1.0]])
    # (1^2 * 1 + 0) + (0 + 2 log 2)
    assert L.gaussian_nll(mean, log_std, target).item() == pytest.approx(1 + 2 * math.log(2.0))
    assert L.bc_mse(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(1.0)


def test_td3_bc_actor_loss_balances_q_and_bc_by_alpha_over_mean_abs_q():
    q1 = torch.tensor([2.0, -4.0], requires_grad=True)  # mean|Q1| = 3 -> lambda = 2.5 / 3
    pi = torch.tensor([[0.5, 0.0], [1.0, -1.0]])
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # squared errors 0.25, 0, 0, 4: mean over all 4 = 1.0625
    loss, lam, bc = L.td3_bc_actor_loss(q1, pi, a, alpha=2.5)
    assert lam.item() == pytest.approx(2.5 / 3)
    assert bc.item() == pytest.approx(1.0625)
    assert loss.item() == pytest.approx(-(2.5 / 3) * (-1.0) + 1.0625)  # mean Q1 = -1
    loss.backward()  # lambda is a constant: dL/dQ1 = -lambda / B per sample
    assert q1.grad.tolist() == pytest.approx([-(2.5 / 3) / 2] * 2)
