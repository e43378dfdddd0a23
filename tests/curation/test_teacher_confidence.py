"""The teacher's confidence in a label from its answer's token logprobs (`firm.curation.confidence`), and the
chat client's side of it (parsing `logprobs.content`)."""

from __future__ import annotations

import math

import pytest

from firm.curation.confidence import score_token_confidence
from firm.llm.openai_client import TokenLogprobs, _token_logprobs
from firm.rewards.parsing import parse_answer

TEXT = '{"reasoning": "ok", "score": [3]}'


def _tokens(text: str, at: dict[str, dict[str, float]]) -> list[TokenLogprobs]:
    """One token per character, certain, except those in `at` (character → its top alternatives)."""
    out = []
    for ch in text:
        top = at.get(ch, {ch: 0.0})
        out.append(TokenLogprobs(token=ch, logprob=top.get(ch, -30.0), top=top))
    return out


def test_certain_uniform_and_split_distributions() -> None:
    parsed = parse_answer("edit", TEXT)
    sure = score_token_confidence(_tokens(TEXT, {"3": {"3": 0.0}}), TEXT, parsed)
    assert sure is not None and sure.p == pytest.approx(1.0) and sure.entropy == pytest.approx(0.0, abs=1e-9)
    uniform = {str(d): math.log(0.2) for d in range(1, 6)}
    u = score_token_confidence(_tokens(TEXT, {"3": uniform}), TEXT, parsed)
    assert u is not None and u.p == pytest.approx(0.2) and u.entropy == pytest.approx(math.log(5))
    # non-digit alternatives are left out and the digits renormalised; " 3" and "3" are one digit
    mixed = {"3": math.log(0.3), " 3": math.log(0.1), "4": math.log(0.2), "}": math.log(0.4)}
    m = score_token_confidence(_tokens(TEXT, {"3": mixed}), TEXT, parsed)
    assert (
        m is not None
        and m.p == pytest.approx(0.4 / 0.6)
        and m.probs == pytest.approx([0, 0, 2 / 3, 1 / 3, 0])
    )


def test_no_confidence_where_it_cannot_be_read() -> None:
    parsed = parse_answer("edit", TEXT)
    assert score_token_confidence(None, TEXT, parsed) is None  # the endpoint returned none
    assert (
        score_token_confidence(_tokens(TEXT, {})[:-1], TEXT, parsed) is None
    )  # tokens do not spell the text
    merged = [TokenLogprobs(token=TEXT[:-3], logprob=0.0), TokenLogprobs(token="3]}", logprob=0.0)]
    assert score_token_confidence(merged, TEXT, parsed) is None  # the digit shares its token
    bad = parse_answer("edit", "no score at all")
    assert (
        not bad.ok and score_token_confidence(_tokens("no score at all", {}), "no score at all", bad) is None
    )


def test_the_client_reads_logprobs_content_and_tolerates_its_absence() -> None:
    block = {"content": [
        {"token": "3", "logprob": -0.1, "top_logprobs": [{"token": "3", "logprob": -0.1}, {"token": "4", "logprob": -2.4}]},
        {"token": "]", "logprob": 0.0, "top_logprobs": []},
    ]}  # fmt: skip
    toks = _token_logprobs(block)
    assert (
        toks is not None and [t.token for t in toks] == ["3", "]"] and toks[0].top == {"3": -0.1, "4": -2.4}
    )
    assert _token_logprobs(None) is None and _token_logprobs({"content": None}) is None
    assert _token_logprobs({"content": [{"logprob": 0.0}]}) is None  # not in that shape: none, not an error
