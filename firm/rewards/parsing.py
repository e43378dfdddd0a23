"""Turn a critic's free text into a score, robustly and never silently.

Three answer formats (see `firm.rewards.rubrics`):

- ``edit`` (execution / consistency): ``{"reasoning": "...", "score": [k]}``. Rules, in order: a JSON object (the
  first ``{`` that starts an object with a ``score`` key; code fences, surrounding prose, single quotes, curly quotes
  and trailing commas are tolerated), ``score`` given as an int, a list whose values agree (``[4]``, ``[4, 4]``) or a
  digit string; then a regex fallback (``"score": [4]``, ``score: 4``, ``Score = 4/5``).
- ``gen`` (instruction following): ``\\boxed{k}``, then ``Final Alignment Rating: k``, then the JSON rule, then a
  regex (``score: k`` / ``rating: k``).
- ``quality``: a three-element list ``[aesthetics, technical, structure]`` from JSON, then after a ``score:`` key,
  then a bare ``[a, b, c]`` (rule ``list``).

Full-width characters (``１２３``, ``：``, ``｛｝``) and curly quotes are folded to ASCII one character for one
character, so every index into the folded text is an index into the original. ``ParseResult.score_spans`` are the
``[start, end)`` spans in the ORIGINAL text of the digit(s) that produced the score — the critic's ``expected``
readout uses them to find the token whose digit distribution it reads.

Scores outside 1..5 give ``out_of_range``; disagreeing answers (two different boxed scores, a boxed score that
disagrees with the rating line, two JSON answers with different scores) and missing scores give ``unparseable``.
A parse failure never becomes a score of 0: ``score`` is None unless ``status == "ok"``.

Agreement with the official extractors
--------------------------------------
The official FIRM-Reward servers read scores with ``_extract_score_and_reasoning`` (editing:
``editing/reward_server/reward_server_qwen3_vl_8b_sft.py``; generation and quality:
``generation/flow_grpo/reward_model_server.py``, with ``_extract_quality_score_and_reasoning``) and score an answer
they cannot read as 0. FIRM reads the score they read from: a JSON object (fenced or inside prose), a list score
(``[4]``, and ``[4, 4]``), a digit string, ``4.0``, a quoted ``"score": [k]`` outside JSON, ``\\boxed{k}`` /
``\\boxed{[k]}`` / ``\\boxed{{k}}``, ``Final Alignment Rating: [k]``, ``Final Score: k``, a quality list after
``"score":`` or bare (``[4, 5, 3]``), a nested ``{"answer": {"score": ...}}`` and agreeing duplicates; and it fails
where they fail (0, 6, ``[]``, no score). Every remaining disagreement is deliberate and named here;
tests/rewards/test_parsing.py::test_official_extractor_table pins each one against what the official code returns:

- ``several-scores``: a one-score answer whose list holds different values (``"score": [4, 5]``) is
  ``unparseable``; the official extractors take the first value. Which of the two the critic meant is unknowable.
  (The regex fallback for text that is not JSON reads single values only, so a broken-JSON ``"score": [4, 4]`` is
  unparseable too, where the official regex reads 4.)
- ``non-integer``: ``3.5`` (or a quality list with ``4.5``) is ``unparseable``; the official servers truncate it
  (``int(3.5) == 3``), which biases every half score downwards and hides that the answer left the scale.
- ``out-of-range``: a number outside 1..5 is ``out_of_range``; the official fallback regex ``\\[?\\s*([1-5])``
  reads the first digit of ``10`` as 1 (and of ``45`` as 4).
- ``boolean``: ``"score": true`` is ``unparseable``; the official check ``isinstance(score, (int, float))`` lets a
  JSON ``true`` through as 1.
- ``disagreeing-answers``: two JSON answers, two ``"score"`` keys, two ``\\boxed{}`` or a ``\\boxed{}`` and a
  ``Final Alignment Rating`` that differ are ``unparseable``; the official servers take the first match.
- ``quality-extra-values``: a quality list of four or more values is ``unparseable``; the official extractor scores
  its first three.
- ``lenient-forms``: FIRM reads a score the official extractors miss (they return 0) when the answer states it
  plainly in another surface form: an unquoted key (``score: 4``, ``Rating: 3``), a sentence (``The score is 4.``),
  ``Score = 2/5`` or a ``"4/5"`` string, single-quoted JSON, full-width digits (``［３］``), a ``"scores"`` key and
  ``\\boxed{\\text{4}}``. A critic that wrote its score this way did judge; a 0 would punish the policy for the
  critic's formatting.

A failure is a status, never a 0: FIRM leaves the decision to the caller's parse-failure policy, and the RL
trainer's ``parse_failure=official`` gives a failed judgement the official servers' 0-score reward. Under that
policy FIRM's rewards therefore equal the official trainers' except on the deliberate cases above: for
``lenient-forms`` FIRM trains on the stated score instead of the failure value, for the others on the failure
value instead of the score the official extractor picked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from firm.errors import InputError
from firm.schemas import ParseStatus

AnswerFormat = Literal["edit", "gen", "quality"]
ANSWER_FORMATS: tuple[str, ...] = ("edit", "gen", "quality")
SCORE_MIN, SCORE_MAX = 1, 5
N_QUALITY = 3

_SCORE_KEYS = ("score", "scores")
_REASONING_KEYS = ("reasoning", "rationale", "explanation", "analysis", "reason")


class ParseResult(BaseModel):
    """The outcome of parsing one critic answer.

    `score` is an int 1..5 (edit, gen) or a list of three ints (quality), and None unless `status` is "ok".
    `score_spans` index the original text: ``text[start:end]`` is the digit that gave each score (one span for
    edit/gen, three for quality, none when not ok). `detail` says why a parse failed (empty when ok).
    """

    status: ParseStatus
    score: int | list[int] | None = None
    parsed_from: str | None = Field(default=None, description="rule that found the score: json, boxed, ...")
    reasoning: str = ""
    score_spans: list[tuple[int, int]] = Field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------------------------------
# Character folding (length preserving)

_FOLD: dict[int, int] = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}  # full-width ASCII block
_FOLD.update(
    {
        0x3000: ord(" "),  # ideographic space
        0x00A0: ord(" "),  # no-break space
        0x201C: ord('"'),
        0x201D: ord('"'),
        0x201E: ord('"'),
        0x2018: ord("'"),
        0x2019: ord("'"),
        0x3010: ord("["),  # 【 】
        0x3011: ord("]"),
    }
)


def fold(text: str) -> str:
    """Map full-width digits/punctuation and curly quotes to ASCII, one character for one (indices preserved)."""
    return text.translate(_FOLD)


# --------------------------------------------------------------------------------------------------------------
# A small position-aware, lenient JSON reader (objects, arrays, strings, numbers, literals).


class _JSONSyntax(Exception):
    pass


@dataclass
class _Scalar:
    value: Any
    start: int
    end: int  # [start, end) of the literal in the text (strings: the content, without quotes)


@dataclass
class _Obj:
    items: dict[str, Any] = field(default_factory=dict)
    start: int = 0
    end: int = 0


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_PLAIN_DQ = re.compile(r'[^"\\]+')
_PLAIN_SQ = re.compile(r"[^'\\]+")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class _Reader:
    """Recursive-descent reader for JSON with the usual LLM slips: single quotes, trailing commas, Python literals.

    It reads the folded text (so curly or full-width quotes and brackets can be structure) but consults the original
    `orig` for quotes and backslashes inside strings: a string opened by an ASCII quote closes only at the same ASCII
    quote, so a curly or full-width quote inside an ordinary JSON rationale is content, not the end of the string; a
    string opened by a curly/full-width quote (``“reasoning”``) closes at any quote that folds to the same character.
    Escapes are only ever started by an ASCII backslash.
    """

    def __init__(self, text: str, orig: str | None = None) -> None:
        self.t = text
        self.o = text if orig is None else orig
        self.n = len(text)

    def ws(self, i: int) -> int:
        while i < self.n and self.t[i].isspace():
            i += 1
        return i

    def value(self, i: int, depth: int = 0) -> tuple[Any, int]:
        if depth > 32:
            raise _JSONSyntax("too deep")
        i = self.ws(i)
        if i >= self.n:
            raise _JSONSyntax("unexpected end")
        c = self.t[i]
        if c == "{":
            return self.obj(i, depth)
        if c == "[":
            return self.arr(i, depth)
        if c in "\"'":
            return self.string(i)
        m = _NUMBER.match(self.t, i)
        if m:
            s = m.group(0)
            v: Any = float(s) if any(ch in s for ch in ".eE") else int(s)
            return _Scalar(v, m.start(), m.end()), m.end()
        for word, lit in _LITERALS.items():
            if self.t.startswith(word, i):
                return _Scalar(lit, i, i + len(word)), i + len(word)
        raise _JSONSyntax(f"unexpected {c!r} at {i}")

    def string(self, i: int) -> tuple[_Scalar, int]:
        q = self.t[i]
        strict = self.o[i] == q  # opened by an ASCII quote: only that ASCII quote closes it
        j = i + 1
        out: list[str] = []
        plain = _PLAIN_DQ if q == '"' else _PLAIN_SQ
        while j < self.n:
            m = plain.match(self.t, j)
            if m:  # jump over a run of ordinary characters
                out.append(m.group(0))
                j = m.end()
                if j >= self.n:
                    break
            c = self.t[j]
            if c == "\\" and self.o[j] == "\\":
                if j + 1 >= self.n:
                    break
                e = self.t[j + 1]
                if e == "u" and j + 5 < self.n:
                    try:
                        out.append(chr(int(self.t[j + 2 : j + 6], 16)))
                    except ValueError:
                        raise _JSONSyntax("bad \\u escape") from None
                    j += 6
                    continue
                out.append(_ESCAPES.get(e, e))
                j += 2
                continue
            if c == q and (not strict or self.o[j] == q):
                return _Scalar("".join(out), i + 1, j), j + 1
            out.append(c)
            j += 1
        raise _JSONSyntax("unterminated string")

    def obj(self, i: int, depth: int) -> tuple[_Obj, int]:
        node = _Obj(start=i)
        j = self.ws(i + 1)
        while True:
            if j < self.n and self.t[j] == "}":
                node.end = j + 1
                return node, j + 1
            if j >= self.n or self.t[j] not in "\"'":
                raise _JSONSyntax(f"expected a key at {j}")
            key, j = self.string(j)
            j = self.ws(j)
            if j >= self.n or self.t[j] != ":":
                raise _JSONSyntax(f"expected ':' at {j}")
            val, j = self.value(j + 1, depth + 1)
            k = str(key.value).strip().lower()
            if k in node.items:  # duplicate key: keep both so that disagreement can be detected
                node.items.setdefault(f"{k}\x00dup", []).append(val)
            else:
                node.items[k] = val
            j = self.ws(j)
            if j < self.n and self.t[j] == ",":
                j = self.ws(j + 1)
            elif j < self.n and self.t[j] == "}":
                continue
            else:
                raise _JSONSyntax(f"expected ',' or '}}' at {j}")

    def arr(self, i: int, depth: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        j = self.ws(i + 1)
        while True:
            if j < self.n and self.t[j] == "]":
                return out, j + 1
            val, j = self.value(j, depth + 1)
            out.append(val)
            j = self.ws(j)
            if j < self.n and self.t[j] == ",":
                j = self.ws(j + 1)
            elif j < self.n and self.t[j] == "]":
                continue
            else:
                raise _JSONSyntax(f"expected ',' or ']' at {j}")


_MAX_OBJECT_STARTS = 256  # bounds the work on pathological text (critic answers are short)


def _json_objects(text: str, orig: str | None = None) -> list[_Obj]:
    """Every JSON-ish object with a score key, scanning from each `{` that is not inside an object already read.
    `text` is the folded text, `orig` the critic's own characters (see `_Reader`)."""
    reader = _Reader(text, orig)
    found: list[_Obj] = []
    i = text.find("{")
    attempts = 0
    while i != -1 and attempts < _MAX_OBJECT_STARTS:
        attempts += 1
        try:
            node, end = reader.obj(i, 0)
        except _JSONSyntax:
            i = text.find("{", i + 1)
            continue
        if any(k in node.items for k in _SCORE_KEYS):
            found.append(node)
            i = text.find("{", end)
        else:  # look inside it: the answer may be nested, e.g. {"answer": {"score": [4]}}
            i = text.find("{", i + 1)
    return found


# --------------------------------------------------------------------------------------------------------------
# Score values


class _Bad(Exception):
    """A score value that cannot be a rubric score; `status` says how."""

    def __init__(self, status: ParseStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_DIGITS = re.compile(r"\d+")
_STR_SCORE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*5\s*)?$")


def _to_int(value: Any) -> int:
    """A rubric score from a JSON value: int, integral float, or a digit string ("4", "4/5")."""
    if isinstance(value, bool) or value is None:
        raise _Bad("unparseable", f"score is {value!r}, not a number")
    if isinstance(value, str):
        m = _STR_SCORE.match(value)
        if not m:
            raise _Bad("unparseable", f"score {value!r} is not a number")
        value = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad("unparseable", f"score {value} is not an integer")
        value = int(value)
    if not isinstance(value, int):
        raise _Bad("unparseable", f"score {value!r} is not a number")
    return value


def _check_range(scores: list[int]) -> None:
    bad = [s for s in scores if not SCORE_MIN <= s <= SCORE_MAX]
    if bad:
        raise _Bad("out_of_range", f"score {bad[0]} is outside {SCORE_MIN}..{SCORE_MAX}")


def _digit_span(text: str, start: int, end: int) -> tuple[int, int]:
    """The span of the integer digits inside a literal occupying text[start:end] (skips quotes, sign, spaces)."""
    m = _DIGITS.search(text, start, end)
    if not m:  # cannot happen for values that passed _to_int
        raise _Bad("unparseable", "score literal has no digits")
    return m.start(), m.end()


def _score_nodes(node: Any, n: int) -> list[_Scalar]:
    """The scalar node(s) of a `score` value: for n == 1 an int/str or a list whose values all agree (``[4]``,
    ``[4, 4]``; the first is used), a list of n otherwise."""
    items = node if isinstance(node, list) else [node]
    for it in items:
        if not isinstance(it, _Scalar):
            raise _Bad("unparseable", "score list contains a nested value")
    if n == 1 and len(items) > 1:
        values = sorted({_to_int(it.value) for it in items})
        if len(values) > 1:
            raise _Bad("unparseable", f"ambiguous: the score list holds different scores ({values})")
        return items[:1]
    if len(items) != n:
        what = "one score" if n == 1 else f"a list of {n} scores"
        raise _Bad("unparseable", f"expected {what}, got {len(items)} value(s)")
    return items


def _from_json(text: str, n: int, orig: str) -> tuple[list[int], list[tuple[int, int]], str, _Obj] | None:
    """Scores from JSON objects in the folded `text`; None when no object with a score key exists.
    The reasoning is read from `orig` (same indices, unfolded)."""
    objs = _json_objects(text, orig)
    if not objs:
        return None
    answers: list[tuple[list[int], list[tuple[int, int]], _Obj]] = []
    for obj in objs:
        key = next(k for k in _SCORE_KEYS if k in obj.items)
        dups = obj.items.get(f"{key}\x00dup", [])
        for val in [obj.items[key], *dups]:
            nodes = _score_nodes(val, n)
            scores = [_to_int(s.value) for s in nodes]
            spans = [_digit_span(text, s.start, s.end) for s in nodes]
            answers.append((scores, spans, obj))
    distinct = {tuple(a[0]) for a in answers}
    if len(distinct) > 1:
        raise _Bad("unparseable", f"ambiguous: JSON answers disagree ({sorted(distinct)})")
    scores, spans, obj = answers[-1]
    _check_range(scores)
    reasoning = _json_reasoning(obj, orig)
    return scores, spans, reasoning, obj


def _json_reasoning(obj: _Obj, orig: str) -> str:
    for k in _REASONING_KEYS:
        v = obj.items.get(k)
        if isinstance(v, _Scalar) and isinstance(v.value, str):
            return _unescape(orig[v.start : v.end]).strip()
    return _strip_fences(orig[: obj.start])


_ESCAPE_SEQ = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


def _unescape(raw: str) -> str:
    """Decode JSON string escapes in `raw` (the original, unfolded characters of a string literal)."""

    def sub(m: re.Match[str]) -> str:
        e = m.group(1)
        return chr(int(e[1:], 16)) if len(e) == 5 else _ESCAPES.get(e, e)

    return _ESCAPE_SEQ.sub(sub, raw)


_FENCE = re.compile(r"```[a-zA-Z]*")


def _strip_fences(s: str) -> str:
    return _FENCE.sub("", s).strip()


# --------------------------------------------------------------------------------------------------------------
# Regex rules

_NUM = r"(-?\d+(?:\.\d+)?)(?!\d|\.\d)"  # a whole number literal (no backtracking into "4.5" or "45")
_NOT_A_LIST = r"""(?!\s*["']?\s*,\s*["']?\s*-?\d)"""  # a single score, not the first element of a list
_KEY_SCORE = re.compile(
    r"""(?<![A-Za-z_])["']?(?:score|scores)["']?\s*(?:[:=]|\bis\b)\s*\[?\s*["']?\s*""" + _NUM + _NOT_A_LIST,
    re.IGNORECASE,
)
_KEY_SCORE_OR_RATING = re.compile(
    r"""(?<![A-Za-z_])["']?(?:score|scores|rating)["']?\s*(?:[:=]|\bis\b)\s*\*{0,2}\s*\[?\s*["']?\s*"""
    + _NUM
    + _NOT_A_LIST,
    re.IGNORECASE,
)
_QUALITY_LIST = re.compile(
    r"""(?<![A-Za-z_])["']?(?:score|scores)["']?\s*[:=]\s*\[\s*["']?\s*"""
    + r"""\s*["']?\s*,\s*["']?\s*""".join([_NUM] * N_QUALITY)
    + r"""\s*["']?\s*\]""",
    re.IGNORECASE,
)
_BARE_LIST = (
    re.compile(  # a list of three numbers without a score key, the official quality extractor's last rule
        r"""\[\s*["']?\s*""" + r"""\s*["']?\s*,\s*["']?\s*""".join([_NUM] * N_QUALITY) + r"""\s*["']?\s*\]"""
    )
)
_BOXED = (
    re.compile(  # also \boxed{[4]}, \boxed{{4}} and \boxed{{[4]}}, which the official reward servers accept
        r"\\?boxed\s*\{+\s*(?:\\(?:text|mathbf|textbf)\s*\{\s*)?(?:\[\s*)?"
        + _NUM
        + r"\s*(?:/\s*5\s*)?(?:\]\s*)?\}+"
    )
)
_RATING_LINE = re.compile(r"final\s+alignment\s+rating\s*\*{0,2}\s*:?\s*\*{0,2}\s*" + _NUM, re.IGNORECASE)


def _num_value(s: str) -> int:
    return _to_int(float(s) if "." in s else int(s))


def _regex_single(text: str, pattern: re.Pattern[str], rule: str) -> tuple[int, tuple[int, int], int] | None:
    """All matches of a single-score pattern; they must agree. Returns (score, digit span, match start) of the last."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    values = [_num_value(m.group(1)) for m in matches]
    if len(set(values)) > 1:
        raise _Bad("unparseable", f"ambiguous: {rule} answers disagree ({sorted(set(values))})")
    last = matches[-1]
    return values[-1], _digit_span(text, last.start(1), last.end(1)), matches[0].start()


# --------------------------------------------------------------------------------------------------------------
# Public parsers


def _ok(score: int | list[int], spans: list[tuple[int, int]], rule: str, reasoning: str) -> ParseResult:
    return ParseResult(status="ok", score=score, parsed_from=rule, reasoning=reasoning, score_spans=spans)


def _fail(status: ParseStatus, detail: str, rule: str | None = None, reasoning: str = "") -> ParseResult:
    return ParseResult(status=status, parsed_from=rule, detail=detail, reasoning=reasoning)


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"critic text must be a string, got {type(text).__name__}")
    return fold(text)


def parse_edit(text: str) -> ParseResult:
    """Parse an editing critic's answer (`{"reasoning": "...", "score": [k]}`) into one score 1..5."""
    t = _check_text(text)
    try:
        got = _from_json(t, 1, text)
    except _Bad as e:
        return _fail(e.status, e.detail, "json")
    if got is not None:
        scores, spans, reasoning, _ = got
        return _ok(scores[0], spans, "json", reasoning)
    return _regex_fallback(t, _KEY_SCORE, text)


def _regex_fallback(t: str, pattern: re.Pattern[str], orig: str) -> ParseResult:
    try:
        got = _regex_single(t, pattern, "regex")
        if got is None:
            return _fail("unparseable", "no score found", reasoning=_strip_fences(orig))
        score, span, start = got
        _check_range([score])
    except _Bad as e:
        return _fail(e.status, e.detail, "regex")
    return _ok(score, [span], "regex", _regex_reasoning(t, orig) or _strip_fences(orig[:start]))


_REASONING_BEFORE_SCORE = re.compile(
    r"""["']?(?:reasoning|rationale|explanation)["']?\s*:\s*["'](.*?)["']\s*,\s*["']?scores?["']?\s*:""",
    re.IGNORECASE | re.DOTALL,
)
_REASONING_LAST = re.compile(
    r"""["']?(?:reasoning|rationale|explanation)["']?\s*:\s*["'](.*)["']\s*\}""", re.IGNORECASE | re.DOTALL
)


def _regex_reasoning(t: str, orig: str) -> str:
    """The rationale of a JSON-like answer too broken to read (e.g. unescaped quotes inside the reasoning)."""
    for pat in (_REASONING_BEFORE_SCORE, _REASONING_LAST):
        m = pat.search(t)
        if m:
            return orig[m.start(1) : m.end(1)].strip()
    return ""


def parse_gen(text: str) -> ParseResult:
    """Parse a generation critic's answer: `\\boxed{k}`, then `Final Alignment Rating: k`, then JSON, then regex."""
    t = _check_text(text)
    try:
        boxed = _regex_single(t, _BOXED, "boxed")
        rating = _regex_single(t, _RATING_LINE, "rating_line")
        if boxed is not None and rating is not None and boxed[0] != rating[0]:
            raise _Bad(
                "unparseable",
                f"ambiguous: \\boxed{{{boxed[0]}}} disagrees with Final Alignment Rating {rating[0]}",
            )
    except _Bad as e:
        return _fail(e.status, e.detail, "boxed")
    for got, rule in ((boxed, "boxed"), (rating, "rating_line")):
        if got is None:
            continue
        score, span, _ = got
        try:
            _check_range([score])
        except _Bad as e:
            return _fail(e.status, e.detail, rule)
        first = min(g[2] for g in (boxed, rating) if g is not None)
        return _ok(score, [span], rule, _gen_reasoning(text[:first]))
    try:
        js = _from_json(t, 1, text)
    except _Bad as e:
        return _fail(e.status, e.detail, "json")
    if js is not None:
        scores, spans, reasoning, _ = js
        return _ok(scores[0], spans, "json", reasoning)
    return _regex_fallback(t, _KEY_SCORE_OR_RATING, text)


def _gen_reasoning(s: str) -> str:
    s = _strip_fences(s)
    return re.sub(r"[\s$*]+$", "", s).strip()


def parse_quality(text: str) -> ParseResult:
    """Parse a quality critic's answer: three 1..5 sub-scores (aesthetics, technical, structure)."""
    t = _check_text(text)
    try:
        got = _from_json(t, N_QUALITY, text)
    except _Bad as e:
        return _fail(e.status, e.detail, "json")
    if got is not None:
        scores, spans, reasoning, _ = got
        return _ok(scores, spans, "json", reasoning)
    rule, matches = "regex", list(_QUALITY_LIST.finditer(t))
    if not matches:
        rule, matches = "list", list(_BARE_LIST.finditer(t))
    if not matches:
        return _fail("unparseable", f"no list of {N_QUALITY} scores found", reasoning=_strip_fences(text))
    try:
        triples = [tuple(_num_value(m.group(k)) for k in range(1, N_QUALITY + 1)) for m in matches]
        if len(set(triples)) > 1:
            raise _Bad("unparseable", f"ambiguous: score lists disagree ({sorted(set(triples))})")
        scores = list(triples[-1])
        _check_range(scores)
    except _Bad as e:
        return _fail(e.status, e.detail, rule)
    last = matches[-1]
    spans = [_digit_span(t, last.start(k), last.end(k)) for k in range(1, N_QUALITY + 1)]
    return _ok(scores, spans, rule, _regex_reasoning(t, text) or _strip_fences(text[: matches[0].start()]))


_PARSERS = {"edit": parse_edit, "gen": parse_gen, "quality": parse_quality}


def parse_answer(fmt: AnswerFormat, text: str) -> ParseResult:
    """Dispatch on the rubric's answer format (`Rubric.answer_format`). Unknown formats raise `InputError`."""
    try:
        parser = _PARSERS[fmt]
    except KeyError:
        raise InputError(
            f"unknown answer format {fmt!r}; expected one of {', '.join(ANSWER_FORMATS)}"
        ) from None
    return parser(text)
