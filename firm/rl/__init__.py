"""FIRM RL stage: DiffusionNFT and Flow-GRPO on diffusion policies with FIRM rewards.

- `config`: `RLConfig` (recipes under firm/recipes/rl/), `load_config(path, overrides)`.
- `policies`: `SD3Policy` (StableDiffusion3Pipeline), `QwenEditPolicy` (QwenImageEditPlusPipeline), tiny builders.
- `sampling` (Euler / dpm2 ODE and SDE-with-log-prob rollouts, guidance, trained timesteps), `advantages` (group
  advantages with a global or per-group std, r), `losses` (NFT, GRPO), `lora` (trainable / old-EMA / reference
  adapters, official targets), `ema` (the exported parameter EMA), `failures` (parse-failure policies), `rewards`
  (`RewardFunction` and implementations).
- `trainer.Trainer`: the loop shared by both algorithms and tasks, with `update` (the gradient passes) and
  `step_rewards` (rewards shared across ranks); `train`: `python -m firm.rl.train`; `checkpoint`: publish / resume;
  `monitor`: metrics, reward-hacking statistics, sample grids; `audit` / `alarms`: the critic audit during RL and
  the reward-hacking alarms; `sample`. Parity with the official trainers:
  `firm/rl/README.md`.
"""
