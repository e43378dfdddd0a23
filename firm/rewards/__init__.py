"""FIRM rewards: rubric prompts, robust parsing of critic answers, and Base-and-Bonus rewards (CME, QMA).

- `firm.rewards.rubrics`: versioned rubric prompts (student / teacher); `firm.rewards.packs`: packs by name or path
  (pure: a pack in the object store is read by the caller through `firm.rubric_store`).
- `firm.rewards.parsing`: `parse_answer(fmt, text) -> ParseResult` (score, status, rule, reasoning, digit spans).
- `firm.rewards.formulas`: CME = E·(0.6 + 0.4·C), QMA = I·(0.4 + 0.6·Q), ablations, `edit_reward`, `gen_reward`,
  `ParseFailurePolicy`.
"""

from firm.rewards.formulas import (
    EditRewardConfig,
    GenRewardConfig,
    ParseFailurePolicy,
    cme,
    edit_reward,
    edit_rewards,
    gen_reward,
    gen_rewards,
    guarded,
    normalize_score,
    qma,
    quality_score,
    weighted_sum,
)
from firm.rewards.parsing import ParseResult, parse_answer, parse_edit, parse_gen, parse_quality

__all__ = [
    "EditRewardConfig",
    "GenRewardConfig",
    "ParseFailurePolicy",
    "ParseResult",
    "cme",
    "edit_reward",
    "edit_rewards",
    "gen_reward",
    "gen_rewards",
    "guarded",
    "normalize_score",
    "parse_answer",
    "parse_edit",
    "parse_gen",
    "parse_quality",
    "qma",
    "quality_score",
    "weighted_sum",
]
