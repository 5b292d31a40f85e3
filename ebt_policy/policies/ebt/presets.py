"""EBT-Policy presets: each one a model size plus the training recipe that goes with it.

Every preset plans with the paper's 2 descent steps except ``tiny``, which plans with exactly 3:
with the new recipe, 3 steps beat 2 on all seven ``tiny`` runs on twogoal, Lift and ``can``; on
``pusht`` (one run, no successes at either count) 3 steps lower coverage (0.166 vs 0.229). Two
training recipes (README, "Why this energy"):

* the reference (method.md): per-step MSE of the unrolled descent, per-sample RMS normalisation of
  the iterate, step size alpha * exp(E). Its optimum is the mean of the demonstrated modes: on the
  multimodal twogoal task every step past two pulls plans toward it (45/50 at 2 steps, 8/50 at 20).
* energy score + Equilibrium Matching (the default of ``mlp`` and ``tiny``): a proper scoring rule
  over two chains, the demonstrated chunks made minima of the energy, no per-step normalisation, a
  fixed step size, trained at depths 2..5. Measured with the MLP energy on twogoal (50/50 at every
  step count 2..20 and adaptive, both goals reached) and Lift (50/50 at 2..20), and with the
  ``tiny`` transformer on twogoal, Lift and ``can`` (three training seeds there), where it beats
  the reference at every step count from 3 up (``can``: 71% at 3 steps, 83% at 5).
  ``mlp-reference`` and ``tiny-reference`` keep the reference recipe for comparison. ``small``
  and ``paper`` keep the reference recipe: ``paper`` is the authors' recipe, and neither is
  measured with the new one (``--policy-cfg.descent.objective energy_score ...`` selects it).
* an optional ranking term (``--policy-cfg.descent.rank-weight 0.1``, off in every preset): InfoNCE
  of the demonstrated chunk against counter-examples, which trains the energy's level as well as
  its gradient. Measured on Lift, can and twogoal (README, "Why this energy"); not a default.

The paper recipe is method.md's (AdamW lr 1e-4, 500 warm-up steps, batch 64); the smaller models
take a higher learning rate and shorter warm-up because they are meant for minutes, not days, of
CPU training.
"""

from __future__ import annotations

from ebt_policy.policies.ebt.configuration import EBTPolicyConfig
from ebt_policy.policies.ebt.descent import DescentConfig
from ebt_policy.policies.factory import Preset, TrainRecipe

# The new recipe's descent settings (energy score + EqM, no per-step normalisation, a fixed step
# size, trained at depths 2..5), shared by every preset that uses it.
_ES_EQM = dict(
    train_steps_base=2,
    train_steps_extra=3,
    objective="energy_score",
    eqm_weight=1.0,
    rms_norm="none",
    step_scale="fixed",
)
# `tiny`'s network and optimiser, shared by its two recipes.
_TINY_NET = dict(
    energy="transformer",
    d_model=64,
    n_heads=4,
    n_obs_layers=1,
    n_energy_layers=1,
    resnet_width=8,
    n_keypoints=16,
)
_TINY_TRAIN = TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=32)

EBT_PRESETS: dict[str, Preset] = {
    # Tests and CPU quickstarts with the transformer: ~0.13M parameters (low-dim), trained with
    # the energy score and Equilibrium Matching at depths 2..5 (see the module docstring).
    "tiny": Preset(
        policy=EBTPolicyConfig(
            preset="tiny", **_TINY_NET,
            # exactly 3 inference steps (module docstring)
            descent=DescentConfig(**_ES_EQM, descent_steps=3, descent_min_grad=0.0),
        ),
        train=_TINY_TRAIN,
    ),
    # The same network with the reference recipe: per-step MSE, 3 + U{0..1} unrolled steps, 2
    # inference steps (the ``tiny`` of every row measured before it switched).
    "tiny-reference": Preset(
        policy=EBTPolicyConfig(
            preset="tiny-reference", **_TINY_NET,
            descent=DescentConfig(train_steps_base=3, train_steps_extra=1),
        ),
        train=_TINY_TRAIN,
    ),
    "small": Preset(
        policy=EBTPolicyConfig(
            preset="small", energy="transformer", d_model=128, n_heads=4, n_obs_layers=2,
            n_energy_layers=2, resnet_width=32,
        ),
        train=TrainRecipe(lr=3e-4, warmup_steps=200, batch_size=64),
    ),
    # The authors' network: d=256, 8 + 8 layers, 4 heads, feed-forward ratio 1 (8.6M parameters
    # without cameras, as theirs), full ResNet-18.
    "paper": Preset(
        policy=EBTPolicyConfig(
            preset="paper", energy="transformer", d_model=256, n_heads=4, n_obs_layers=8,
            n_energy_layers=8, ffn_mult=1, resnet_width=64,
        ),
        train=TrainRecipe(lr=1e-4, warmup_steps=500, batch_size=64),
    ),
    # The cheap MLP energy (method.md, last section): 3 x 256 SiLU, trained with the energy score
    # and Equilibrium Matching at depths 2..5 (see the module docstring). With cameras, the
    # CPU-sized image encoder of `tiny` (ResNet-18 at width 8).
    "mlp": Preset(
        policy=EBTPolicyConfig(
            preset="mlp", energy="mlp", mlp_hidden=256, mlp_layers=3, resnet_width=8,
            descent=DescentConfig(**_ES_EQM),
        ),
        train=TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=256),
    ),
    # The same network with the reference recipe: per-step MSE, 3 unrolled steps.
    "mlp-reference": Preset(
        policy=EBTPolicyConfig(
            preset="mlp-reference", energy="mlp", mlp_hidden=256, mlp_layers=3, resnet_width=8,
            descent=DescentConfig(train_steps_base=3, train_steps_extra=0),
        ),
        train=TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=256),
    ),
}  # fmt: skip
