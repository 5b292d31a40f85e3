"""MSE presets: EBT's sizes and training recipes under the same names (policies/ebt/presets.py),
so ``--policy mse --preset P`` is the control for ``--policy ebt --preset P``."""

from __future__ import annotations

from ebt_policy.policies.factory import Preset, TrainRecipe
from ebt_policy.policies.mse.configuration import MSEPolicyConfig

MSE_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        policy=MSEPolicyConfig(
            preset="tiny", backbone="transformer", d_model=64, n_heads=4, n_obs_layers=1,
            n_layers=1, resnet_width=8, n_keypoints=16,
        ),
        train=TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=32),
    ),
    "small": Preset(
        policy=MSEPolicyConfig(
            preset="small", backbone="transformer", d_model=128, n_heads=4, n_obs_layers=2,
            n_layers=2, resnet_width=32,
        ),
        train=TrainRecipe(lr=3e-4, warmup_steps=200, batch_size=64),
    ),
    "paper": Preset(
        policy=MSEPolicyConfig(
            preset="paper", backbone="transformer", d_model=256, n_heads=4, n_obs_layers=8,
            n_layers=8, resnet_width=64,
        ),
        train=TrainRecipe(lr=1e-4, warmup_steps=500, batch_size=64),
    ),
    "mlp": Preset(
        policy=MSEPolicyConfig(preset="mlp", backbone="mlp", mlp_hidden=256, mlp_layers=3,
                               resnet_width=32),
        train=TrainRecipe(lr=1e-3, warmup_steps=50, batch_size=256),
    ),
}  # fmt: skip
