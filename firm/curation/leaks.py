"""Privileged-information cleaning: the student never sees the teacher's difference report or plan, so a student
target must not talk about them ("as the difference report says ...").

`find_leaks(text, kind)` returns the sentences that mention the hidden context; `clean_text` drops those sentences.
The policy (`LeakPolicy`) decides per sample: `clean` (drop the sentences; a sample whose score line itself leaks,
or that is empty afterwards, is dropped), `drop` (drop the sample) or `keep` (keep it as is). Curation counts each
outcome in `stats.json` (`leaks`). The paper does not say what it did; FIRM makes it explicit.
"""

from __future__ import annotations

import re
from typing import Literal

LeakPolicy = Literal["clean", "drop", "keep"]

_EDIT = [
    r"\b(difference|differences|comparison)\s+report\b",
    r"\bthe\s+report\b",
    r"\b(provided|given|listed|above|reported)\s+(differences|comparison|report)\b",
    r"\bcareful\s+comparison\b",
    r"\b(according\s+to|as\s+(noted|listed|stated)\s+in|per)\s+the\s+(differences|comparison|report)\b",
]
_GEN = [
    r"\bchecklist\b",
    r"\b(the|this|provided|given)\s+plan\b",
    r"\bplan\s+(item|items|question|questions)\b",
    r"\b(verification|checklist)\s+(question|questions|item|items)\b",
]
PATTERNS = {"edit": re.compile("|".join(_EDIT), re.I), "gen": re.compile("|".join(_GEN), re.I)}
_SENTENCE = re.compile(r"[^\n.!?]*(?:[.!?]+|\n|$)")


def sentences(text: str) -> list[str]:
    """The text cut into sentences and lines, separators kept (so joining them gives the text back)."""
    return [s for s in _SENTENCE.findall(text) if s]


def find_leaks(text: str, kind: str) -> list[str]:
    """The sentences of `text` that mention the hidden report (`edit`) or plan (`gen`)."""
    pat = PATTERNS[kind]
    return [s.strip() for s in sentences(text) if pat.search(s)]


def clean_text(text: str, kind: str) -> str:
    """`text` without the sentences that mention the hidden context, whitespace tidied."""
    pat = PATTERNS[kind]
    kept = "".join(s for s in sentences(text) if not pat.search(s))
    kept = re.sub(r"[ \t]+\n", "\n", kept)
    return re.sub(r"\n{3,}", "\n\n", kept).strip()
