"""The teacher's own confidence in a curated label, from the log-probabilities its endpoint returned.

Scoring requests ask an OpenAI-compatible teacher for the answer tokens' top-k log-probabilities
(`TeacherRequest.top_logprobs`; `logprobs: true, top_logprobs: k` on the wire). The score the parser read
(`ParseResult.score_spans`) is located among the answer's tokens; where that token is exactly the score digit, the
digits "1".."5" among its top-k alternatives (renormalised among themselves, a digit outside the top k counting as
0; alternatives that differ only by surrounding whitespace, " 3" and "3", are one digit) form the distribution the
label was drawn from, and `firm.rewards.confidence.judgement_confidence` gives its confidence — the same rule as
the critic's (`p`, the probability of the digit written, is what `min_confidence` compares).

No confidence (None, never 0): the endpoint returned no log-probabilities (a local teacher, an endpoint that
refuses them, a cached answer from before), the answer's tokens do not spell its text, or the score digit shares
its token with other characters. `firm.curation.runner` applies the policy (`low_confidence: flag | drop` under
`min_confidence`) when it finishes, so a journal's samples keep their confidence whatever the policy.
"""

from __future__ import annotations

import math
from typing import Any

from firm.rewards.confidence import digit_probs_from_logprobs, judgement_confidence

TOP_LOGPROBS = 10  # alternatives asked for at each answer token (endpoints allow up to 20)
DIGITS = (1, 2, 3, 4, 5)


def _logsumexp(a: float | None, b: float) -> float:
    if a is None:
        return b
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def score_token_confidence(logprobs: list[Any] | None, text: str, parsed: Any) -> Any:
    """The confidence of a parsed single-digit score (`parsed`: a `ParseResult`) from the answer's token
    log-probabilities (`TokenLogprobs`: token text, its logprob, `top` alternatives): a `firm.schemas.Confidence`,
    or None where there is none."""
    if not logprobs or not parsed.ok or not isinstance(parsed.score, int) or not parsed.score_spans:
        return None
    if "".join(t.token for t in logprobs) != text:  # tokens that do not spell the answer cannot be located
        return None
    char, start = parsed.score_spans[0][0], 0
    for t in logprobs:
        end = start + len(t.token)
        if start <= char < end:
            if t.token.strip() != str(parsed.score):  # the digit merged into a longer token
                return None
            alternatives = {t.token: t.logprob, **t.top}  # the token written, if not among its top k
            by_digit: dict[int, float] = {}
            for tok, lp in alternatives.items():
                d = tok.strip()
                if len(d) == 1 and d in "12345" and not math.isnan(lp):
                    by_digit[int(d)] = _logsumexp(by_digit.get(int(d)), lp)
            probs = digit_probs_from_logprobs(by_digit, DIGITS)
            return None if probs is None else judgement_confidence([probs], parsed.score)
        start = end
    return None


def answer_confidence(answer: Any, parsed: Any) -> float | None:
    """`p` of `score_token_confidence` for a `TeacherAnswer` (what curation keeps per sample), or None."""
    c = score_token_confidence(getattr(answer, "logprobs", None), answer.text, parsed)
    return None if c is None else round(c.p, 6)
