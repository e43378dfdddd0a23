"""How sure the critic was: confidence from the digit distribution at the score position (pure, no torch).

A critic writes its score as one digit "1".."5"; the softmax over those five digit logits at that position (the
critic's `_DigitLogits`, or vLLM's top-k logprobs there) is the distribution the score was drawn from. From it:

- `p`: the probability of the digit the answer wrote — what thresholds (`reward.low_confidence`) and the bench's
  risk–coverage curves rank by;
- `entropy` (nats): 0 when certain, ln 5 ≈ 1.609 when uniform over 1..5;
- `std`: the spread of the score under the distribution (raw 1..5 units), e.g. 2 for a 50/50 split of 1 and 5.

Quality has three sub-scores and QMA uses their minimum: the judgement's confidence is that of min(s1, s2, s3)
with the three distributions treated as independent (the same assumption as the expected readout's E[min]);
each sub-score's own is kept in `sub`.

**Per reward** (the documented rule): the axes that enter the formula — editing: execution and consistency (CME,
and the `sum` / `guard` ablations); generation: instruction and the quality minimum (QMA), or instruction alone —
are taken as independent, so the reward's confidence is that of their joint distribution: `p` = the product of
the axes' `p` (the probability that every score is what the critic wrote), `entropy` = the sum of their entropies
and `std` = the standard deviation of the reward itself under the joint (reward units, [0, 1]), so an axis the
formula barely uses (consistency when execution is 1) barely widens it. Where any axis has no confidence (its
answer did not parse, or the digit could not be located) the reward has none: absent, never 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

from firm.schemas import Confidence

N_DIGITS = 5
UNIFORM_ENTROPY = math.log(N_DIGITS)


def _normalised(probs: Sequence[float]) -> list[float]:
    if len(probs) != N_DIGITS:
        raise ValueError(f"a digit distribution has {N_DIGITS} probabilities, got {len(probs)}")
    total = float(sum(probs))
    if not total > 0 or any(p < 0 or math.isnan(p) for p in probs):
        raise ValueError(f"not a probability distribution: {list(probs)!r}")
    return [float(p) / total for p in probs]


def digit_confidence(probs: Sequence[float], chosen: int) -> Confidence:
    """Confidence of one score digit `chosen` (1..5) drawn from `probs` = P(1..5) (normalised here)."""
    if not 1 <= int(chosen) <= N_DIGITS:
        raise ValueError(f"chosen score must be 1..{N_DIGITS}, got {chosen!r}")
    ps = _normalised(probs)
    mean = sum((k + 1) * p for k, p in enumerate(ps))
    var = sum(((k + 1) - mean) ** 2 * p for k, p in enumerate(ps))
    entropy = -sum(p * math.log(p) for p in ps if p > 0)
    return Confidence(
        p=min(1.0, max(0.0, ps[int(chosen) - 1])),
        entropy=max(0.0, entropy),
        std=math.sqrt(max(0.0, var)),
        probs=ps,
    )


def min_distribution(dists: Sequence[Sequence[float]]) -> list[float]:
    """P(min(s1, …) = 1..5) for independent scores with the given digit distributions."""
    survival = [1.0] * N_DIGITS  # P(min >= k)
    for d in dists:
        ps = _normalised(d)
        tail = [sum(ps[k:]) for k in range(N_DIGITS)]
        survival = [a * b for a, b in zip(survival, tail, strict=True)]
    return [survival[k] - (survival[k + 1] if k + 1 < N_DIGITS else 0.0) for k in range(N_DIGITS)]


def judgement_confidence(dists: Sequence[Sequence[float]], score: int | Sequence[int]) -> Confidence:
    """A judgement's confidence: one distribution for a single score; three (aesthetics, technical, structure) for
    quality, giving the confidence of their minimum with each sub-score's in `sub`."""
    if isinstance(score, int):
        if len(dists) != 1:
            raise ValueError(f"a single score needs one digit distribution, got {len(dists)}")
        return digit_confidence(dists[0], score)
    scores = [int(s) for s in score]
    if len(scores) != len(dists):
        raise ValueError(f"{len(scores)} sub-scores but {len(dists)} digit distributions")
    sub = [digit_confidence(d, s) for d, s in zip(dists, scores, strict=True)]
    joint = digit_confidence(min_distribution(dists), min(scores))
    return joint.model_copy(update={"sub": sub})


def digit_probs_from_logprobs(top: Mapping[int, float], digit_ids: Sequence[int]) -> list[float] | None:
    """P(1..5) from the top-k log-probabilities at one position (`{token id: logprob}`, e.g. vLLM's): the digits
    present, renormalised among themselves; a digit outside the top k counts as 0. None when no digit is there."""
    logps = [top.get(t) for t in digit_ids]
    present = [lp for lp in logps if lp is not None and not math.isnan(lp)]
    if not present:
        return None
    m = max(present)
    ex = [0.0 if lp is None or math.isnan(lp) else math.exp(lp - m) for lp in logps]
    total = sum(ex)
    return [e / total for e in ex]


def reward_confidence(
    axes: Mapping[str, Confidence | None], formula: Callable[..., float]
) -> Confidence | None:
    """The reward's confidence from its axes' (in `formula`'s argument order; each carrying `probs`): the joint
    distribution of independent axes pushed through `formula` (normalised [0, 1] scores in, the reward out).
    None when any axis has no confidence."""
    if not axes or any(c is None or c.probs is None for c in axes.values()):
        return None
    confs = [c for c in axes.values() if c is not None]
    mean = sq = 0.0
    for combo in itertools.product(range(N_DIGITS), repeat=len(confs)):
        w = math.prod(c.probs[k] for c, k in zip(confs, combo, strict=True))  # type: ignore[index]
        if w <= 0:
            continue
        r = formula(*(k / (N_DIGITS - 1) for k in combo))
        mean += w * r
        sq += w * r * r
    return Confidence(
        p=min(1.0, max(0.0, math.prod(c.p for c in confs))),
        entropy=sum(c.entropy for c in confs),
        std=math.sqrt(max(0.0, sq - mean * mean)),
        axes={name: c.p for name, c in axes.items() if c is not None},
    )


def confidence_vector(c: Confidence | None) -> tuple[float, float, float]:
    """(p, entropy, std) — the three numbers the Triton `confidence` output carries; NaN where absent."""
    if c is None:
        return (math.nan, math.nan, math.nan)
    return (c.p, c.entropy, c.std)
