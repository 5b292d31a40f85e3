"""EBT-Policy presets: each one a model size plus the training recipe that goes with it.

Every preset plans with the paper's 2 descent steps. Measured (README, Results): on low-dim Lift a
third step helps (47-50/50 -> 50/50), on the multimodal twogoal task it hurts (45-47/50 ->
28-38/50: further descent pulls the chunk off its mode), so the default stays 2;
``ebt-policy eval --descent-steps`` overrides it.

The paper recipe is method.md's (AdamW lr 1e-4, 500 warm-up steps, batch 64); the smaller models
take a higher learning rate and shorter warm-up because they are meant for minutes, not days, of
CPU training.
"""

from __future__ import annotations

from ebt_policy.policies.ebt.configuration import EBTPolicyConfig
from ebt_policy.policies.ebt.descent import DescentConfig
from ebt_policy.policies.factory import Preset, TrainRecipe

EBT_PRESETS: dict[str, Preset] = {
    # Tests and CPU quickstarts with the transformer: ~0.2M parameters (low-dim).
    "tiny": Preset(
        policy=EBTPolicyConfig(
            preset="tiny", energy="transformer", d_model=64, n_heads=4, n_obs_layers=1,
            n_energy_layers=1, resnet_width=8, n_keypoints=16,
            descent=DescentConfig(train_steps_base=3, train_steps_extra=1),
        ),
        train=TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=32),
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
    # The cheap MLP energy (method.md, last section): 3 x 256 SiLU, 3 unrolled steps.
    "mlp": Preset(
        policy=EBTPolicyConfig(
            preset="mlp", energy="mlp", mlp_hidden=256, mlp_layers=3, resnet_width=32,
            descent=DescentConfig(train_steps_base=3, train_steps_extra=0),
        ),
        train=TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=256),
    ),
}  # fmt: skip
