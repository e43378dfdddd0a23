"""What a rollout trains on when its reward did not parse: the `reward.parse_failure` policy.

Whether a reward failed is decided from its `status` alone (`firm.rl.rewards.is_scored`): every status other than
"ok" is a failure, whatever its name, and counts in `reward/parse_failure_rate` under every policy. Then:

- `skip` (FIRM's default): the sample gets no reward and is dropped from its group's advantages.
- `min_reward`: the sample trains on 0, the lowest CME / QMA reward.
- `official`: the value the official FIRM-Reward trainers compute. Their reward servers score an unparseable answer as
  raw 0, which the clients normalise like any score. Editing (`editing/flow_grpo/rewards.py`, `multi_score` with
  `range_1_5` normalisation and the total score E·(0.6 + 0.4·C) clipped to [0, 1]): a failed judgement becomes
  (0 − 1)/4 = −0.25, so an execution failure gives 0 and a consistency failure alone gives 0.5·E. Generation
  (`generation/flow_grpo/rewards.py`, `qwen_vl_reward_score` in the QMA "mix" blend): a quality failure gives the
  instruction term I alone, an instruction failure 0.

Which judgement failed is read from the breakdown's sub-scores (a failed axis has none; generation judged quality
when `raw_scores` has a "quality" entry); a failed status with every sub-score present counts as every axis failed.
"""

from __future__ import annotations

from typing import Literal

from firm.rl.rewards import is_scored
from firm.schemas import RewardBreakdown

ParseFailurePolicy = Literal["skip", "min_reward", "official"]
MIN_REWARD = 0.0
OFFICIAL_FAILED_SCORE = -0.25  # a failed judgement is a raw 0, normalised by (s − 1)/4
OFFICIAL_EDIT_WEIGHTS = (0.6, 0.4)  # editing/config/qwen_image_edit_nft.py: mllm_total_score_w1 / w2


def _clip01(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def official_failure_reward(b: RewardBreakdown) -> float:
    """The official trainers' reward for a breakdown whose status is not ok (see the module docstring)."""
    if b.task == "edit":
        axes = [b.execution, b.consistency]
        if all(a is not None for a in axes):
            axes = [None, None]
        e, c = (OFFICIAL_FAILED_SCORE if a is None else float(a) for a in axes)
        w_base, w_bonus = OFFICIAL_EDIT_WEIGHTS
        return _clip01(e * (w_base + w_bonus * c))
    quality_judged = "quality" in b.raw_scores
    if b.instruction is not None and quality_judged and b.quality is None:
        return _clip01(float(b.instruction))  # only the quality judgement failed
    return 0.0  # the instruction judgement failed (or the status does not say which one did)


def training_reward(b: RewardBreakdown, policy: ParseFailurePolicy) -> float | None:
    """The reward a sample trains on: its own when its status is ok, else what `policy` says (None = dropped)."""
    if is_scored(b):
        return float(b.reward)  # type: ignore[arg-type]
    if policy == "skip":
        return None
    if policy == "min_reward":
        return MIN_REWARD
    return official_failure_reward(b)
