"""FIRM RL stage: DiffusionNFT and Flow-GRPO on diffusion policies with FIRM rewards.

- `config`: `RLConfig` (recipes under firm/recipes/rl/), `load_config(path, overrides)`.
- `policies`: `SD3Policy` (StableDiffusion3Pipeline), `QwenEditPolicy` (QwenImageEditPlusPipeline), tiny builders.
- `sampling` (ODE / SDE-with-log-prob rollouts), `advantages` (group advantages, r), `losses` (NFT, GRPO),
  `lora` (trainable / old-EMA / reference adapters), `rewards` (`RewardFunction` and implementations).
- `trainer.Trainer`: the loop shared by both algorithms and tasks; `train`: `python -m firm.rl.train`;
  `checkpoint`: publish / resume; `monitor`: metrics, reward-hacking statistics, sample grids; `sample`.
"""
