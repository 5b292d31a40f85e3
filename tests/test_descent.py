"""Energy descent: the step, training unroll, inference stopping, batch independence, NaN errors."""

from __future__ import annotations

import math

import pytest
import torch

from ebt_policy.errors import ConfigError
from ebt_policy.models import TransformerEnergy
from ebt_policy.policies import DescentConfig, EnergyDescent, NonFiniteEnergyError
from ebt_policy.policies.ebt.descent import cosine_sigmas

torch.set_num_threads(1)

TP, DA = 16, 3


def quadratic(target: torch.Tensor, scale: torch.Tensor | None = None):
    """E(x) = scale_b * mean((x - target)^2), per sample: a bowl with its minimum at target."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        s = torch.ones(x.shape[0]) if scale is None else scale
        return s * (x - target).pow(2).mean(dim=(1, 2))

    return energy


def test_cosine_sigmas_anneal_from_max_to_min():
    s = cosine_sigmas(6, 0.2, 0.002)
    assert s[0] == pytest.approx(0.2) and s[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(s, s[1:], strict=False))
    assert cosine_sigmas(1, 0.2, 0.002) == [0.2]


def test_one_inference_step_follows_the_method():
    """x = x_i / rms(x_i); x_look = x + mu v; v' = mu v - alpha exp(E)/T g; x' = x + v'."""
    cfg = DescentConfig(alpha=3.0, temperature=2.0, momentum=0.9, exp_energy_max=1e6)
    descent = EnergyDescent(cfg)
    torch.manual_seed(0)
    target = torch.randn(2, TP, DA)
    x = torch.randn(2, TP, DA) * 3
    v = torch.randn(2, TP, DA) * 0.1
    x_next, v_next, e, g = descent.step(quadratic(target), x, v, training=False)
    xn = x / x.pow(2).mean(dim=(1, 2), keepdim=True).add(cfg.rms_eps).sqrt()
    look = xn + 0.9 * v
    e_ref = (look - target).pow(2).mean(dim=(1, 2))
    g_ref = 2 * (look - target) / (TP * DA)
    v_ref = 0.9 * v - (3.0 * e_ref.exp() / 2.0)[:, None, None] * g_ref
    torch.testing.assert_close(e, e_ref)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(v_next, v_ref)
    torch.testing.assert_close(x_next, xn + v_ref)
    assert not v_next.requires_grad and not x_next.requires_grad


def test_step_size_is_clamped():
    """exp(E) is bounded, so a huge energy cannot make a huge step."""
    descent = EnergyDescent(DescentConfig(alpha=1.0, exp_energy_max=2.0, rms_norm="none"))
    x = torch.zeros(1, TP, DA)
    big = lambda y: 50.0 + y.sum(dim=(1, 2))  # noqa: E731  E = 50, dE/dx = 1
    x_next, _, _, _ = descent.step(big, x, torch.zeros_like(x), training=False)
    torch.testing.assert_close(x_next, torch.full_like(x, -2.0))


def test_inference_descent_steps_2_takes_exactly_2_steps_and_reaches_a_bowl_minimum():
    descent = EnergyDescent(DescentConfig(alpha=2400.0, rms_norm="none", momentum=0.0))
    target = torch.rand(4, TP, DA) - 0.5
    res = descent.infer(quadratic(target, torch.full((4,), 0.01)), torch.randn(4, TP, DA))
    assert res.steps.tolist() == [2, 2, 2, 2]
    assert res.chunk.shape == (4, TP, DA) and res.energy.shape == (4,)
    assert not res.chunk.requires_grad
    # alpha * exp(E) * 0.01 * 2 / (Tp*Da) ~ 1: each step is close to a Newton step on the bowl.
    assert (res.chunk - target).abs().max() < 0.05


def test_adaptive_inference_stops_each_sample_on_its_own_gradient():
    """descent_steps=20 with descent_min_grad: a flat-energy sample stops after 1+1 steps, a steep
    one runs on."""
    descent = EnergyDescent(
        DescentConfig(alpha=1.0, rms_norm="none", descent_steps=20, descent_min_grad=1e-3)
    )
    target = torch.ones(3, TP, DA)
    scale = torch.tensor([0.0, 1e-4, 1.0])  # flat, nearly flat, steep
    x0 = torch.zeros(3, TP, DA)
    res = descent.infer(quadratic(target, scale), x0)
    assert res.steps.tolist()[:2] == [2, 2]
    assert res.steps[2] == 20
    # Batch independence of the stopping rule: the steep sample alone gives the same result.
    alone = descent.infer(quadratic(target[2:], scale[2:]), x0[2:])
    torch.testing.assert_close(alone.chunk, res.chunk[2:])
    assert alone.steps.tolist() == [20]
    # descent_steps=1 is a single (final) step.
    assert descent.infer(quadratic(target), x0, descent_steps=1).steps.tolist() == [1, 1, 1]


def test_reject_uphill_keeps_the_lowest_energy_point_of_an_overshooting_sample():
    """A step size that overshoots a bowl (x - t -> -1.5 (x - t)) raises the energy at the next
    point: that sample stops and returns its start with the start's energy; a sample whose steps
    go downhill (x - t -> 0.5 (x - t)) descends exactly as without the rule."""
    cfg = DescentConfig(
        alpha=1.0, momentum=0.0, rms_norm="none", step_scale="fixed", descent_min_grad=0.0
    )
    descent = EnergyDescent(cfg)
    target = torch.ones(2, TP, DA)
    scale = torch.tensor([60.0, 12.0])  # 2 * alpha * scale / (TP * DA) = 2.5 and 0.5
    energy = quadratic(target, scale)
    x0 = torch.zeros(2, TP, DA)
    plain = descent.infer(energy, x0, descent_steps=5)
    res = descent.infer(energy, x0, descent_steps=5, reject_uphill=True)
    assert plain.energy[0] > energy(x0)[0]  # without the rule the overshooting sample diverges
    torch.testing.assert_close(res.chunk[0], x0[0])
    torch.testing.assert_close(res.energy[0], energy(x0)[0])
    assert res.energy[0] == energy(res.chunk)[0]  # the energy of the returned chunk
    torch.testing.assert_close(res.chunk[1], plain.chunk[1])
    torch.testing.assert_close(res.energy[1], plain.energy[1])
    assert res.steps.tolist() == [2, 5]
    # the rule is per sample: the downhill sample alone gives the same result
    alone = descent.infer(quadratic(target[1:], scale[1:]), x0[1:], 5, reject_uphill=True)
    torch.testing.assert_close(alone.chunk, res.chunk[1:])


def test_training_unroll_draws_n_steps_and_builds_second_order_graph():
    cfg = DescentConfig(train_steps_base=2, train_steps_extra=2)
    descent = EnergyDescent(cfg)
    torch.manual_seed(0)
    model = TransformerEnergy(
        4, DA, 2, TP, d_model=16, n_heads=2, n_obs_layers=1, n_energy_layers=1
    )
    ctx = model.encode_context(torch.randn(3, 2, 4))
    target = torch.rand(3, TP, DA) * 2 - 1
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        loss, metrics = descent.train_unroll(lambda x: model(ctx, x), target, generator=gen)
        seen.add(int(metrics["n_steps"]))
    assert seen == {2, 3, 4}
    assert loss.requires_grad and math.isfinite(metrics["loss"])
    loss.backward(retain_graph=False)
    assert all(p.grad is not None for p in model.parameters())


def test_final_step_only_loss():
    descent = EnergyDescent(DescentConfig(train_steps_base=3, train_steps_extra=0))
    target = torch.zeros(2, TP, DA)
    _, m_all = descent.train_unroll(quadratic(target), target, torch.Generator().manual_seed(0))
    final = EnergyDescent(
        DescentConfig(train_steps_base=3, train_steps_extra=0, loss_final_step_only=True)
    )
    _, m_fin = final.train_unroll(quadratic(target), target, torch.Generator().manual_seed(0))
    assert m_fin["loss"] == pytest.approx(m_fin["final_mse"])
    assert m_all["final_mse"] == pytest.approx(m_fin["final_mse"])
    assert m_all["loss"] != pytest.approx(m_all["final_mse"])


def test_training_noise_is_seedable():
    descent = EnergyDescent(DescentConfig(train_steps_base=2))
    target = torch.rand(2, TP, DA)
    runs = [
        descent.train_unroll(quadratic(target), target, torch.Generator().manual_seed(s))[1]
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1] and runs[0]["loss"] != runs[2]["loss"]


@pytest.mark.parametrize("training", [True, False])
def test_nan_raises_with_the_step_index(training):
    calls = {"n": 0}

    def energy(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        e = x.pow(2).mean(dim=(1, 2))
        return e * float("nan") if calls["n"] == 3 else e  # the third evaluation is step 2

    descent = EnergyDescent(DescentConfig(train_steps_base=5, train_steps_extra=0, descent_steps=5))
    x = torch.randn(2, TP, DA)
    with pytest.raises(NonFiniteEnergyError, match="step 2 of 5") as info:
        if training:
            descent.train_unroll(energy, x)
        else:
            descent.infer(energy, x, descent_min_grad=0.0)
    assert info.value.step == 2


def test_batch_rms_variant_couples_samples_and_per_sample_does_not():
    target = torch.zeros(4, TP, DA)
    x0 = torch.randn(4, TP, DA)
    x0[1:] *= 10.0  # neighbours with a very different scale
    for mode, coupled in (("sample", False), ("batch", True)):
        descent = EnergyDescent(DescentConfig(rms_norm=mode, alpha=10.0))
        both = descent.infer(quadratic(target), x0).chunk[0]
        alone = descent.infer(quadratic(target[:1]), x0[:1]).chunk[0]
        assert torch.allclose(both, alone, atol=1e-6) != coupled, mode


def test_descent_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="rms_norm"):
        DescentConfig(rms_norm="global")
    with pytest.raises(ConfigError, match="descent_steps"):
        DescentConfig(descent_steps=0)
    with pytest.raises(ConfigError, match="exp_energy"):
        DescentConfig(exp_energy_min=2.0, exp_energy_max=1.0)
