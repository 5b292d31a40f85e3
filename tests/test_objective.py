"""Training objectives of the energy descent: the energy score keeps modes, MSE averages them."""

from __future__ import annotations

import itertools

import pytest
import torch

from ebt_policy.errors import ConfigError
from ebt_policy.policies.ebt.descent import DescentConfig, EnergyDescent
from ebt_policy.policies.ebt.objectives import (
    eqm_loss,
    ranking_counterexamples,
    ranking_loss,
    step_loss,
)


def _descent(**kw) -> EnergyDescent:
    return EnergyDescent(DescentConfig(**kw))


def test_energy_score_equals_hand_computation():
    a = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]]])  # (B=2, Tp=1, Da=2)
    x1 = torch.tensor([[[3.0, 4.0]], [[1.0, 1.0]]])
    x2 = torch.tensor([[[0.0, 0.0]], [[1.0, 3.0]]])
    # RMS distances: sample 0: |x1-a| = sqrt(25/2), |x2-a| = 0, |x1-x2| = sqrt(25/2)
    #                sample 1: |x1-a| = 0, |x2-a| = sqrt(4/2), |x1-x2| = sqrt(4/2)
    expected = ((25 / 2) ** 0.5 + 0 - (25 / 2) ** 0.5 + 0 + 2**0.5 - 2**0.5) / 2
    got = step_loss("energy_score", torch.cat([x1, x2]), a)
    assert got.item() == pytest.approx(expected, abs=1e-3)


def _expected_loss(d: EnergyDescent, samples: list[float], targets: list[float]) -> float:
    """Mean loss over every (chain, chain', target) combination: an exact expectation."""
    total, n = 0.0, 0
    for s1, s2, a in itertools.product(samples, samples, targets):
        x = torch.tensor([[[s1]], [[s2]]]) if d.config.n_chains == 2 else torch.tensor([[[s1]]])
        total += step_loss(d.config.objective, x, torch.tensor([[[a]]])).item()
        n += 1
    return total / n


@pytest.mark.parametrize("loss", ["mse", "energy_score"])
def test_two_point_target_minimum(loss):
    """Demos split evenly between -1 and +1. The energy score prefers plans distributed like
    the demos over plans at the average; MSE prefers the average (the reference's flaw)."""
    d = _descent(objective=loss)
    modes = [-1.0, 1.0]
    bimodal = _expected_loss(d, modes, modes)
    mean = _expected_loss(d, [0.0], modes)
    one_mode = _expected_loss(d, [1.0], modes)
    if loss == "energy_score":
        assert bimodal < mean and bimodal < one_mode
    else:
        assert mean < bimodal


def test_energy_score_unroll_runs_two_chains():
    torch.manual_seed(0)
    d = _descent(objective="energy_score", rms_norm="none", step_scale="fixed", alpha=0.1)
    target = torch.randn(3, 4, 2)
    w = torch.randn(4, 2, requires_grad=True)
    seen = []

    def energy(x):
        seen.append(x.shape[0])
        return ((x - w) ** 2).mean(dim=(1, 2))

    loss, metrics = d.train_unroll(energy, target, n_steps=2)
    loss.backward()
    assert seen == [6, 6] and w.grad is not None and torch.isfinite(loss)


def test_eqm_loss_is_zero_for_the_ideal_bowl():
    """E(x) = ||x - a||^2 / (2 alpha) has alpha * grad E = x - a: the EqM target exactly."""
    alpha = 50.0
    d = _descent(alpha=alpha, eqm_weight=1.0)
    a = torch.randn(4, 3, 2)
    loss = eqm_loss(lambda x: ((x - a) ** 2).sum(dim=(1, 2)) / (2 * alpha), a, d.config.step_size)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_displacement_stopping_is_per_sample():
    """Sample 0 sits at the minimum (its steps barely move it), sample 1 starts far away: the
    displacement rule stops sample 0 after one step and lets sample 1 run to the cap."""
    d = _descent(
        rms_norm="none", step_scale="fixed", alpha=0.05, momentum=0.0, descent_min_disp=1e-3
    )
    x0 = torch.stack([torch.full((4, 2), 1e-3), torch.full((4, 2), 50.0)])

    def bowl(x):
        return (x**2).sum(dim=(1, 2))

    result = d.infer(bowl, x0, descent_steps=20, descent_min_grad=0.0)
    assert result.steps.tolist()[0] <= 2
    assert result.steps.tolist()[1] == 20
    alone = d.infer(bowl, x0[1:], descent_steps=20, descent_min_grad=0.0)
    assert torch.equal(alone.chunk[0], result.chunk[1])
    d.config.descent_min_disp = 0.0  # without the rule both samples run to the cap
    assert d.infer(bowl, x0, descent_steps=20, descent_min_grad=0.0).steps.tolist() == [20, 20]


@pytest.mark.parametrize(
    "field,value",
    [
        ("objective", "hinge"),
        ("energy_score_beta", 2.0),
        ("eqm_weight", -1.0),
        ("step_scale", "x"),
        ("rank_weight", -0.1),
        ("rank_noise", 0.0),
    ],
)
def test_bad_objective_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        DescentConfig(**{field: value})


def test_ranking_loss_equals_hand_computation():
    """Two observations, the demo and two counter-examples each, energies given per candidate."""
    target = torch.zeros(2, 1, 1)
    negatives = torch.ones(2, 2, 1, 1)  # (K=2, B=2, 1, 1)
    table = torch.tensor([0.0, 1.0, 2.0, 0.5, 3.0, 0.0])  # (K+1)*B candidates, demo rows first
    seen = []

    def energy(x):
        seen.append(x.shape)
        return table

    scale, reg = 2.0, 0.1
    loss, e_demo = ranking_loss(energy, target, negatives, reg=reg, scale=scale)
    assert seen == [torch.Size([6, 1, 1])]
    u = scale * table.view(3, 2)  # (K+1, B): sample 0 sees (0, 2, 6), sample 1 (4, 1, 0)
    nce = [(-u[0, b] - torch.logsumexp(-u[:, b], 0)).neg().item() for b in range(2)]
    expected = sum(nce) / 2 + reg * u[0].pow(2).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert e_demo.tolist() == [0.0, 1.0]


def test_ranking_term_puts_the_demo_below_its_counterexamples():
    """A bowl whose centre and width are learnt, started away from the demonstrations: after
    training on the ranking term alone the demo ranks below (nearly) every counter-example (a
    noised demo at a tiny noise scale may tie it)."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(8, 4, 2, generator=gen)
    centre = torch.zeros(8, 4, 2, requires_grad=True)
    width = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([centre, width], lr=0.05)

    def energy(x):  # candidates are stacked (K+1) times over the batch of 8
        c = centre.repeat(x.shape[0] // 8, 1, 1)
        return width.exp() * ((x - c) ** 2).mean(dim=(1, 2))

    refined = torch.randn(16, 4, 2, generator=gen)  # two chains' final iterates

    def demo_is_lowest() -> float:
        negatives = ranking_counterexamples(target, refined, 0.5, gen)  # (K=4, 8, 4, 2)
        with torch.no_grad():
            e = energy(torch.cat([target[None], negatives]).flatten(0, 1)).view(5, 8)
        return (e[0] < e[1:]).float().mean().item()  # pairs (demo, counter-example) ranked right

    before = demo_is_lowest()
    for _ in range(200):
        negatives = ranking_counterexamples(target, refined, 0.5, gen)
        assert negatives.shape == (4, 8, 4, 2) and not negatives.requires_grad
        loss, _ = ranking_loss(energy, target, negatives, reg=0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = demo_is_lowest()
    assert after > 0.9 and after > before + 0.1, (before, after)


@pytest.mark.parametrize("recipe", ["reference", "energy_score_eqm", "energy_score_eqm_rank"])
def test_ebt_policy_trains_with_each_objective(recipe):
    """Both recipes are selectable by name and their loss falls on a fixed batch."""
    from test_policy_ebt import batch as make_batch
    from test_policy_ebt import random_stats, shape_meta

    from ebt_policy.policies import make_policy, make_policy_config

    preset = "mlp-reference" if recipe == "reference" else "mlp"
    cfg = make_policy_config("ebt", preset, mlp_hidden=64)
    if recipe.endswith("rank"):
        cfg.descent.rank_weight = 0.1
    assert (cfg.descent.objective == "mse") == (recipe == "reference")
    policy = make_policy(cfg, shape_meta(), random_stats())
    batch = make_batch(16)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss, metrics = policy.compute_loss(batch, generator=torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert ("eqm_loss" in metrics) == (recipe != "reference")
    assert ("rank_loss" in metrics) == recipe.endswith("rank")
