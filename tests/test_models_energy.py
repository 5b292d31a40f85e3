"""Energy networks: shapes, masks, fused-vs-explicit attention, second-order gradients."""

from __future__ import annotations

import pytest
import torch

from ebt_policy.models import MLPEnergy, TransformerEnergy, sinusoidal_positions

torch.set_num_threads(1)

TO, TP, DA, F = 2, 16, 3, 5


def tiny_transformer(n_energy_layers: int = 1) -> TransformerEnergy:
    torch.manual_seed(0)
    return TransformerEnergy(
        F, DA, TO, TP, d_model=32, n_heads=4, n_obs_layers=1, n_energy_layers=n_energy_layers
    )


def test_sinusoidal_positions_are_distinct_and_bounded():
    table = sinusoidal_positions(16, 32)
    assert table.shape == (16, 32)
    assert table.abs().max() <= 1.0
    assert torch.cdist(table, table).add(torch.eye(16)).min() > 0.1  # no two positions alike


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_energy_is_one_scalar_per_sample_and_batch_independent(kind):
    model = tiny_transformer() if kind == "transformer" else MLPEnergy(F, DA, TO, TP, hidden=32)
    frames = torch.randn(5, TO, F)
    chunk = torch.randn(5, TP, DA)
    e = model(model.encode_context(frames), chunk)
    assert e.shape == (5,)
    e1 = model(model.encode_context(frames[2:3]), chunk[2:3])
    torch.testing.assert_close(e1, e[2:3], atol=1e-6, rtol=1e-5)


def test_fused_attention_matches_explicit():
    model = tiny_transformer(2)
    ctx = model.encode_context(torch.randn(4, TO, F))
    chunk = torch.randn(4, TP, DA)
    torch.testing.assert_close(
        model(ctx, chunk, fused=True), model(ctx, chunk), atol=1e-5, rtol=1e-5
    )


def test_action_r_sees_frame_c_only_if_r_ge_c():
    # With one energy block, self-attention runs before any observation enters, so action token
    # 0's head output can depend on frame 0 only; later tokens may see frame 1.
    model = tiny_transformer(1)
    frames = torch.randn(1, TO, F)
    chunk = torch.randn(1, TP, DA)
    outs = {}
    model.head.register_forward_hook(lambda m, i, o: outs.__setitem__("head", o))
    model(model.encode_context(frames), chunk)
    before = outs["head"].clone()
    frames2 = frames.clone()
    frames2[:, 1] += 1.0  # change the later frame only
    model(model.encode_context(frames2), chunk)
    after = outs["head"]
    torch.testing.assert_close(after[:, 0], before[:, 0])
    assert (after[:, 1:] - before[:, 1:]).abs().max() > 1e-4
    # The temporal encoder is causal: observation token 0 ignores frame 1.
    torch.testing.assert_close(
        model.encode_context(frames2)[:, 0], model.encode_context(frames)[:, 0]
    )


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
def test_second_order_gradients_reach_every_parameter(kind):
    """The descent trains through dE/dx: d/dtheta of a loss on dE/dx must reach all weights."""
    model = tiny_transformer(2) if kind == "transformer" else MLPEnergy(F, DA, TO, TP, hidden=32)
    ctx = model.encode_context(torch.randn(4, TO, F))
    x = torch.randn(4, TP, DA, requires_grad=True)
    e = model(ctx, x)
    (g,) = torch.autograd.grad(e.sum(), x, create_graph=True)
    # The exp(E) step-size factor is what carries gradient to the head's output bias.
    loss = (x - 1000.0 * e.exp()[:, None, None] * g).pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no second-order gradient for {missing}"


def test_mlp_split_first_layer_equals_concatenation():
    """The obs/chunk split of the first layer is the same map as a linear on [obs ‖ chunk]."""
    torch.manual_seed(0)
    model = MLPEnergy(F, DA, TO, TP, hidden=16, n_layers=2)
    frames, chunk = torch.randn(3, TO, F), torch.randn(3, TP, DA)
    w = torch.cat([model.obs_in.weight, model.chunk_in.weight], dim=1)
    h = torch.cat([frames.flatten(1), chunk.flatten(1)], dim=1) @ w.T + model.obs_in.bias
    expected = model.out(model.trunk(h)).mean(-1)  # the per-output mean
    torch.testing.assert_close(model(model.encode_context(frames), chunk), expected)
