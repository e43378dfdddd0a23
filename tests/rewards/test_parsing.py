"""Parser table tests: realistic critic answers, good and malformed, with exact digit spans."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from firm.errors import InputError
from firm.rewards.parsing import ParseResult, fold, parse_answer, parse_edit, parse_gen, parse_quality

LONG = (
    "The instruction asks to replace the red umbrella with a blue one. In the edited image the umbrella is now "
    "blue and its shape and handle are preserved; the woman holding it, the rain streaks and the street behind "
    "are unchanged. Lighting on the canopy matches the scene. One very subtle miss: the umbrella's tip is still "
    "faintly reddish. " * 6
)

GEN_ANSWER = """Requirements:
1. Three cats - present, three cats are visible.
2. Sitting on a green sofa - the sofa is green.
3. No dogs (negative constraint) - no dog appears.
4. Watercolour style - the image looks photographic, not watercolour.

Final analysis: the content is right but the requested style is missing, a non-critical detail.
Final Alignment Rating: 4
\\boxed{4}"""

# (format, critic text, expected status, expected score, expected rule)
CASES: list[tuple[str, str, str, object, str | None]] = [
    # ---------------- edit: good
    ("edit", '{"reasoning": "The hat was added as requested.", "score": [5]}', "ok", 5, "json"),
    ("edit", '{"score": [3], "reasoning": "Main intent done, but the scarf is missing."}', "ok", 3, "json"),
    ("edit", '{"reasoning": "fine", "score": 4}', "ok", 4, "json"),
    ("edit", '```json\n{"reasoning": "Only the sky changed.", "score": [5]}\n```', "ok", 5, "json"),
    (
        "edit",
        'Let me compare the images.\n```json\n{\n  "reasoning": "'
        + LONG
        + '",\n  "score": [4]\n}\n```\nDone.',
        "ok",
        4,
        "json",
    ),
    ("edit", "{'reasoning': 'The car is now red.', 'score': [5]}", "ok", 5, "json"),
    ("edit", '{"reasoning": "Background repainted.", "score": [2],}', "ok", 2, "json"),
    ("edit", '{"reasoning": "ok", "score": ["4"]}', "ok", 4, "json"),
    ("edit", "{'reasoning': 'ok', 'score': '4'}", "ok", 4, "json"),
    ("edit", '{"reasoning": "全部完成", "score": [４]}', "ok", 4, "json"),
    ("edit", "｛“reasoning”： “fine”， “score”： ［３］｝", "ok", 3, "json"),
    ("edit", '{"reasoning": "the instruction {add a hat} was done", "score": [5]}', "ok", 5, "json"),
    # curly / full-width quotes inside an ASCII-quoted rationale are content, not the end of the string
    ("edit", '{"reasoning": "the sign now reads “OPEN”", "score": [4]}', "ok", 4, "json"),
    ("edit", '{"reasoning": "it’s “done”＂ mostly＼", "score": [3]}', "ok", 3, "json"),
    (
        "edit",
        'I think the instruction {make it night} was followed.\n{"reasoning": "night sky", "score": [4]}',
        "ok",
        4,
        "json",
    ),
    ("edit", '{"Reasoning": "fine", "Score": [1]}', "ok", 1, "json"),
    ("edit", '{"reasoning": "fine", "score": [4.0]}', "ok", 4, "json"),
    ("edit", '{"reasoning": "The "red" car was painted blue", "score": [2]}', "ok", 2, "regex"),
    ("edit", "The edit removes the lamp but also crops the table.\nscore: 3", "ok", 3, "regex"),
    ("edit", 'reasoning: fine\n"score": [ 5 ]', "ok", 5, "regex"),
    ("edit", "Score = 2/5 because most of the scene changed.", "ok", 2, "regex"),
    ("edit", '{"reasoning": "ok", "score": [4]} {"reasoning": "ok again", "score": [4]}', "ok", 4, "json"),
    ("edit", '{"answer": {"reasoning": "nested", "score": [4]}}', "ok", 4, "json"),
    ("edit", "The score is 4.", "ok", 4, "regex"),
    # ---------------- edit: malformed
    ("edit", "scores: [3, 4, 4]", "unparseable", None, None),
    ("edit", "score: [4.5, 3]", "unparseable", None, None),
    ("edit", "score: 45", "out_of_range", None, "regex"),
    ("edit", '{"reasoning": "nothing changed", "score": [0]}', "out_of_range", None, "json"),
    ("edit", '{"reasoning": "perfect", "score": [6]}', "out_of_range", None, "json"),
    ("edit", '{"reasoning": "hmm", "score": [-1]}', "out_of_range", None, "json"),
    ("edit", '{"reasoning": "perfect", "score": 10}', "out_of_range", None, "json"),
    ("edit", '{"reasoning": "I cannot judge this."}', "unparseable", None, None),
    ("edit", "The images look the same to me.", "unparseable", None, None),
    ("edit", "", "unparseable", None, None),
    ("edit", '{"reasoning": "ok", "score": [3, 4]}', "unparseable", None, "json"),
    ("edit", '{"reasoning": "ok", "score": []}', "unparseable", None, "json"),
    ("edit", '{"reasoning": "ok", "score": "four"}', "unparseable", None, "json"),
    ("edit", '{"reasoning": "ok", "score": null}', "unparseable", None, "json"),
    ("edit", '{"reasoning": "ok", "score": [3.5]}', "unparseable", None, "json"),
    ("edit", '{"reasoning": "ok", "score": true}', "unparseable", None, "json"),
    (
        "edit",
        '{"reasoning": "first", "score": [2]}\n{"reasoning": "revised", "score": [4]}',
        "unparseable",
        None,
        "json",
    ),
    ("edit", '{"reasoning": "x", "score": [2], "score": [5]}', "unparseable", None, "json"),
    ("edit", "score: 2 ... actually score: 4", "unparseable", None, "regex"),
    ("edit", '{"reasoning": "cut off mid-sent', "unparseable", None, None),
    # ---------------- gen: good
    ("gen", GEN_ANSWER, "ok", 4, "boxed"),
    ("gen", "All requirements met.\n\\boxed{5}", "ok", 5, "boxed"),
    ("gen", "Analysis...\nFinal Alignment Rating: 3", "ok", 3, "rating_line"),
    ("gen", "Analysis...\n**Final Alignment Rating:** **2**\n$\\boxed{2}$", "ok", 2, "boxed"),
    ("gen", "Analysis...\nFinal Alignment Rating：５\n\\boxed{５}", "ok", 5, "boxed"),
    ("gen", "Analysis...\n\\boxed{ 3 }", "ok", 3, "boxed"),
    ("gen", "Analysis...\n\\boxed{\\text{4}}", "ok", 4, "boxed"),
    ("gen", "I give \\boxed{4}. To repeat: \\boxed{4}", "ok", 4, "boxed"),
    ("gen", '{"reasoning": "two of three cats", "score": [3]}', "ok", 3, "json"),
    ("gen", "The main subject is present.\nRating: 3", "ok", 3, "regex"),
    ("gen", "Everything matches.\n\\boxed{5/5}", "ok", 5, "boxed"),
    ("gen", "Mostly there.\n\\boxed{[4]}", "ok", 4, "boxed"),
    ("gen", "Mostly there.\n\\boxed{{4}}", "ok", 4, "boxed"),
    ("gen", "All good.\n\\boxed{{[5]}}", "ok", 5, "boxed"),
    ("gen", "**Final Alignment Rating: [3]**\n\\boxed{{[3]}}", "ok", 3, "boxed"),
    # ---------------- gen: malformed
    ("gen", "Analysis...\n\\boxed{3}\nOn reflection \\boxed{4}", "unparseable", None, "boxed"),
    ("gen", "Final Alignment Rating: 5\n\\boxed{4}", "unparseable", None, "boxed"),
    ("gen", "Final Alignment Rating: 2\nFinal Alignment Rating: 3", "unparseable", None, "boxed"),
    ("gen", "Final Alignment Rating: 0\n\\boxed{0}", "out_of_range", None, "boxed"),
    ("gen", "Final Alignment Rating: 6\n\\boxed{6}", "out_of_range", None, "boxed"),
    ("gen", "Final Alignment Rating: 7", "out_of_range", None, "rating_line"),
    ("gen", "The image shows a cat on a sofa. It follows the prompt fairly well.", "unparseable", None, None),
    ("gen", "Final Alignment Rating: \\boxed{}", "unparseable", None, None),
    # ---------------- quality: good
    (
        "quality",
        '{"score": [4, 3, 5], "reasoning": "Pleasant colours, slight blur, good anatomy."}',
        "ok",
        [4, 3, 5],
        "json",
    ),
    ("quality", '```json\n{"reasoning": "sharp", "score": [5,5,4]}\n```', "ok", [5, 5, 4], "json"),
    ("quality", "{'score': ['2', '3', '1'], 'reasoning': 'noisy'}", "ok", [2, 3, 1], "json"),
    ("quality", '{"score": [４, ３, ５], "reasoning": "ok"}', "ok", [4, 3, 5], "json"),
    ("quality", "Overall fine.\nscores: [3, 4, 4]", "ok", [3, 4, 4], "regex"),
    ("quality", '{"reasoning": "the "hands" are wrong", "score": [3, 4, 2]}', "ok", [3, 4, 2], "regex"),
    # ---------------- quality: malformed
    ("quality", '{"score": [4, 3], "reasoning": "two only"}', "unparseable", None, "json"),
    ("quality", '{"score": [4], "reasoning": "one only"}', "unparseable", None, "json"),
    ("quality", '{"score": 4, "reasoning": "scalar"}', "unparseable", None, "json"),
    ("quality", '{"score": [4, 3, 6], "reasoning": "too high"}', "out_of_range", None, "json"),
    ("quality", '{"score": [0, 3, 4], "reasoning": "zero"}', "out_of_range", None, "json"),
    ("quality", "Aesthetics are good, technical quality poor.", "unparseable", None, None),
    ("quality", "scores: [3, 4, 4] ... scores: [3, 4, 5]", "unparseable", None, "regex"),
]


def _id(case: tuple[str, str, str, object, str | None]) -> str:
    fmt, text, status, *_ = case
    return f"{fmt}-{status}-{text[:30]!r}"


def test_table_is_large_and_mixed() -> None:
    assert len(CASES) >= 30
    assert {c[2] for c in CASES} == {"ok", "unparseable", "out_of_range"}
    assert {c[0] for c in CASES} == {"edit", "gen", "quality"}


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_parse_table(case: tuple[str, str, str, object, str | None]) -> None:
    fmt, text, status, score, rule = case
    r = parse_answer(fmt, text)  # type: ignore[arg-type]
    assert r.status == status, r.detail
    assert r.score == score
    assert r.parsed_from == rule
    if r.ok:
        n = 3 if fmt == "quality" else 1
        assert len(r.score_spans) == n
        scores = r.score if isinstance(r.score, list) else [r.score]
        for (a, b), s in zip(r.score_spans, scores, strict=True):
            # the span covers exactly the digit in the ORIGINAL text (full-width digits included)
            assert b - a == 1
            assert fold(text[a:b]) == str(s)
        assert r.detail == ""
    else:
        assert r.score is None, "a failed parse must never carry a score"
        assert r.score_spans == []
        assert r.detail


def test_spans_point_at_the_answer_not_the_rationale() -> None:
    text = '{"reasoning": "a 3 would be too harsh; score 3 is wrong", "score": [5]}'
    r = parse_edit(text)
    assert r.score == 5
    ((a, b),) = r.score_spans
    assert a == text.rindex("5") and b == a + 1


def test_gen_span_is_the_boxed_digit() -> None:
    r = parse_gen(GEN_ANSWER)
    ((a, b),) = r.score_spans
    assert GEN_ANSWER[a - len("\\boxed{") : b + 1] == "\\boxed{4}"


def test_rating_line_span() -> None:
    text = "The prompt wants two dogs; one is present.\nFinal Alignment Rating: 3\n"
    r = parse_gen(text)
    ((a, b),) = r.score_spans
    assert text[a:b] == "3" and text[:a].endswith("Rating: ")


def test_full_width_spans_index_original_text() -> None:
    text = "分析……\nFinal Alignment Rating：４\n\\boxed{４}"
    r = parse_gen(text)
    assert r.ok and r.score == 4
    ((a, b),) = r.score_spans
    assert text[a:b] == "４"


def test_quality_spans_in_order() -> None:
    text = '{"reasoning": "score [1, 1, 1] would be unfair", "score": [2, 4, 3]}'
    r = parse_quality(text)
    assert r.score == [2, 4, 3]
    assert [text[a:b] for a, b in r.score_spans] == ["2", "4", "3"]
    assert r.score_spans[0][0] > text.index('"score"')


def test_reasoning_extracted() -> None:
    assert parse_edit('{"reasoning": " The hat was added. ", "score": [5]}').reasoning == "The hat was added."
    assert parse_gen(GEN_ANSWER).reasoning.startswith("Requirements:")
    assert "Final Alignment Rating" not in parse_gen(GEN_ANSWER).reasoning
    assert parse_edit('{"reasoning": "the "red" car", "score": [2]}').reasoning == 'the "red" car'
    assert parse_quality('{"score": [4, 3, 5], "reasoning": "sharp"}').reasoning == "sharp"
    escaped = parse_edit('{"reasoning": "the \\"red\\" caf\\u00e9\\nsign", "score": [3]}')
    assert escaped.reasoning == 'the "red" café\nsign'
    # reasoning keeps the critic's own characters (full-width text is folded only for score finding)
    assert parse_edit('{"reasoning": "全角：ＯＫ", "score": [４]}').reasoning == "全角：ＯＫ"


def test_parse_result_round_trips_json() -> None:
    r = parse_quality('{"score": [4, 3, 5]}')
    again = ParseResult.model_validate_json(r.model_dump_json())
    assert again == r and again.score_spans == r.score_spans


def test_unknown_format_and_non_text_are_errors() -> None:
    with pytest.raises(InputError, match="unknown answer format 'video'"):
        parse_answer("video", "{}")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="must be a string"):
        parse_edit(None)  # type: ignore[arg-type]


def test_deeply_nested_garbage_does_not_crash() -> None:
    text = "{" * 5000 + '"score": [4]' + "}" * 5000
    r = parse_edit(text)
    assert r.status in {"ok", "unparseable"}
    assert r.score in {4, None}


# ------------------------------------------------------------------------------------------ properties

rationale = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\{}'), max_size=200
)
FORMATS = ["edit", "gen", "quality"]


@settings(max_examples=200, deadline=None)
@given(fmt=st.sampled_from(FORMATS), text=st.text(max_size=300))
def test_never_crashes_and_never_scores_out_of_range(fmt: str, text: str) -> None:
    r = parse_answer(fmt, text)  # type: ignore[arg-type]
    if r.ok:
        scores = r.score if isinstance(r.score, list) else [r.score]
        assert all(isinstance(s, int) and 1 <= s <= 5 for s in scores)
        assert [fold(text[a:b]) for a, b in r.score_spans] == [str(s) for s in scores]
    else:
        assert r.score is None and r.score_spans == []


@settings(max_examples=150, deadline=None)
@given(reason=rationale, k=st.integers(1, 5), prefix=rationale, fence=st.booleans(), wide=st.booleans())
@example(reason="“", k=1, prefix="", fence=False, wide=False)  # the draw that once turned CI red
@example(reason="it’s a ＂quote＂ and ｛brace｝ ＼", k=5, prefix="“", fence=True, wide=True)
def test_edit_json_round_trip(reason: str, k: int, prefix: str, fence: bool, wide: bool) -> None:
    digit = chr(0xFF10 + k) if wide else str(k)
    body = '{"reasoning": "' + reason + '", "score": [' + digit + "]}"
    text = prefix + ("\n```json\n" + body + "\n```" if fence else body)
    r = parse_edit(text)
    assert (r.status, r.score, r.parsed_from) == ("ok", k, "json")
    assert r.reasoning == reason.strip()
    ((a, b),) = r.score_spans
    assert text[a:b] == digit and a == text.rindex(digit)


@settings(max_examples=100, deadline=None)
@given(analysis=rationale, k=st.integers(1, 5), j=st.integers(1, 5))
def test_gen_boxed_and_rating_agreement(analysis: str, k: int, j: int) -> None:
    text = f"{analysis}\nFinal Alignment Rating: {k}\n\\boxed{{{j}}}"
    r = parse_gen(text)
    if k == j:
        assert (r.status, r.score, r.parsed_from) == ("ok", k, "boxed")
        assert text[r.score_spans[0][0] - len("\\boxed{") :].startswith(f"\\boxed{{{k}}}")
    else:
        assert r.status == "unparseable" and r.score is None


@settings(max_examples=100, deadline=None)
@given(triple=st.lists(st.integers(-1, 7), min_size=3, max_size=3), reason=rationale)
def test_quality_range(triple: list[int], reason: str) -> None:
    text = '{"score": [' + ", ".join(map(str, triple)) + '], "reasoning": "' + reason + '"}'
    r = parse_quality(text)
    if all(1 <= s <= 5 for s in triple):
        assert r.ok and r.score == triple
        assert [text[a:b] for a, b in r.score_spans] == [str(s) for s in triple]
    else:
        assert r.status == "out_of_range" and r.score is None


# --------------------------------------------------------------------------------------------------------------
# Against the official FIRM-Reward extractors

# (format, critic text, what the official extractor returns, what FIRM returns, deliberate-difference name or None).
# "official": the score of `_extract_score_and_reasoning` in FIRM-Reward's editing/reward_server/
# reward_server_qwen3_vl_8b_sft.py (edit) and generation/flow_grpo/reward_model_server.py (gen; quality via
# `_extract_quality_score_and_reasoning`, its sub-scores), read and run at commit ba4149389e8902b91817fbccce90a4e3cf9f7605;
# None: no score (the servers then score 0). "firm": the parsed score, or the failure status.
OFFICIAL: list[tuple[str, str, object, object, str | None]] = [
    # ---------------- agreements
    ("edit", '{"reasoning": "done", "score": [4]}', 4, 4, None),
    ("edit", '{"reasoning": "done", "score": 4}', 4, 4, None),
    ("edit", '{"reasoning": "done", "score": "4"}', 4, 4, None),
    ("edit", '{"reasoning": "done", "score": [4.0]}', 4, 4, None),
    ("edit", '```json\n{"reasoning": "done", "score": [5]}\n```', 5, 5, None),
    ("edit", '{"reasoning": "ok", "score": [4, 4]}', 4, 4, None),
    ("edit", '"score": [3]', 3, 3, None),
    ("edit", '{"reasoning": "ok", "score": [4],}', 4, 4, None),
    ("edit", '{"score": [3]} {"score": [3]}', 3, 3, None),
    ("edit", '{"answer": {"reasoning": "nested", "score": [4]}}', 4, 4, None),
    ("edit", '{"reasoning": "ok", "score": [0]}', None, "out_of_range", None),
    ("edit", '{"reasoning": "ok", "score": [6]}', None, "out_of_range", None),
    ("edit", '{"reasoning": "ok", "score": []}', None, "unparseable", None),
    ("edit", '{"reasoning": "I cannot judge"}', None, "unparseable", None),
    ("gen", "Final Alignment Rating: 4\n\\boxed{4}", 4, 4, None),
    ("gen", "**Final Alignment Rating: [4]**", 4, 4, None),
    ("gen", "\\boxed{[3]}", 3, 3, None),
    ("gen", "\\boxed{{3}}", 3, 3, None),
    ("gen", "Final Score: 3", 3, 3, None),
    ("gen", '{"reasoning": "ok", "score": 3}', 3, 3, None),
    ("gen", "\\boxed{4.5}", None, "unparseable", None),
    ("quality", '{"reasoning": "ok", "score": [4, 5, 3]}', [4, 5, 3], [4, 5, 3], None),
    ("quality", '{"reasoning": "ok", "score": ["4", "5", "3"]}', [4, 5, 3], [4, 5, 3], None),
    ("quality", "Scores: [4, 5, 3]", [4, 5, 3], [4, 5, 3], None),
    ("quality", "[4, 5, 3]", [4, 5, 3], [4, 5, 3], None),
    ("quality", "aesthetics 4, quality 5, structure 3: [4, 5, 3]", [4, 5, 3], [4, 5, 3], None),
    ("quality", '{"reasoning": "ok", "score": [4, 6, 3]}', None, "out_of_range", None),
    ("quality", '{"reasoning": "ok", "score": [4, 5]}', None, "unparseable", None),
    # ---------------- deliberate differences (named in firm.rewards.parsing's docstring)
    ("edit", '{"reasoning": "ok", "score": [4, 5]}', 4, "unparseable", "several-scores"),
    ("gen", '{"reasoning": "ok", "score": [4, 5]}', 4, "unparseable", "several-scores"),
    ("edit", 'reasoning: fine\n"score": [4, 4]', 4, "unparseable", "several-scores"),
    ("edit", '{"reasoning": "ok", "score": 3.5}', 3, "unparseable", "non-integer"),
    ("quality", '{"reasoning": "ok", "score": [4.5, 4, 3]}', [4, 4, 3], "unparseable", "non-integer"),
    ("edit", '{"reasoning": "ok", "score": [10]}', 1, "out_of_range", "out-of-range"),
    ("edit", '{"reasoning": "ok", "score": 45}', 4, "out_of_range", "out-of-range"),
    ("gen", "Final Alignment Rating: 10", 1, "out_of_range", "out-of-range"),
    ("edit", '{"reasoning": "ok", "score": true}', 1, "unparseable", "boolean"),
    ("edit", '{"score": [3]} {"score": [4]}', 3, "unparseable", "disagreeing-answers"),
    ("edit", '"score": 3 and later "score": 4', 3, "unparseable", "disagreeing-answers"),
    ("gen", "\\boxed{4}\nFinal Alignment Rating: 3", 4, "unparseable", "disagreeing-answers"),
    ("gen", "\\boxed{4} ... \\boxed{2}", 4, "unparseable", "disagreeing-answers"),
    ("quality", "[4, 5, 3] and [2, 2, 2]", [4, 5, 3], "unparseable", "disagreeing-answers"),
    ("quality", '{"score": [4, 5, 3]} {"score": [2, 2, 2]}', [4, 5, 3], "unparseable", "disagreeing-answers"),
    (
        "quality",
        '{"reasoning": "ok", "score": [4, 5, 3, 2]}',
        [4, 5, 3],
        "unparseable",
        "quality-extra-values",
    ),
    ("edit", "The score is 4.", None, 4, "lenient-forms"),
    ("edit", "score: 4", None, 4, "lenient-forms"),
    ("edit", "Score = 2/5", None, 2, "lenient-forms"),
    ("edit", "{'reasoning': 'ok', 'score': [4]}", None, 4, "lenient-forms"),
    ("edit", '{"reasoning": "ok", "score": [３]}', None, 3, "lenient-forms"),
    ("edit", '{"reasoning": "ok", "scores": [4]}', None, 4, "lenient-forms"),
    ("edit", '{"reasoning": "ok", "score": "4/5"}', None, 4, "lenient-forms"),
    ("gen", "\\boxed{\\text{4}}", None, 4, "lenient-forms"),
    ("gen", "The rating is 4.", None, 4, "lenient-forms"),
]


@pytest.mark.parametrize("case", OFFICIAL, ids=[f"{c[0]}-{c[4] or 'same'}-{c[1][:30]!r}" for c in OFFICIAL])
def test_official_extractor_table(case: tuple[str, str, object, object, str | None]) -> None:
    """FIRM reads what the official extractors read, except where the difference is deliberate and named in the
    parser's docstring; a failure matches the official "no score" (the servers' 0)."""
    import firm.rewards.parsing as parsing

    fmt, text, official, firm, deliberate = case
    got = parse_answer(fmt, text)  # type: ignore[arg-type]
    assert (got.score if got.ok else got.status) == firm
    same = got.score == official if got.ok else official is None
    if deliberate is None:
        assert same, f"FIRM disagrees with the official extractor on {text!r} without a named reason"
    else:
        assert not same, (
            f"{deliberate}: no longer a difference on {text!r}; drop it from the docstring and table"
        )
        assert f"``{deliberate}``" in (parsing.__doc__ or "")
