"""Small generated curation inputs and a scripted chat-completions teacher that knows their answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from firm.curation.synthetic import synthetic_edit_items, synthetic_gen_items
from firm.llm.openai_client import image_data_url

REWRITTEN = "Remove the blue circle."
LEAK = "According to the difference report, red squares were added."
GEN_LEAK = "Everything on the checklist was verified."
SURE_P, UNSURE_P = 0.9, 0.3  # the scripted teacher's probability of the score it writes


def digit_probs(k: int, p: float) -> list[float]:
    """P(1..5) with `p` on score `k` and the rest spread evenly."""
    return [p if d == k else (1 - p) / 4 for d in range(1, 6)]


def _texts(body: dict[str, Any]) -> tuple[str, list[str]]:
    text, urls = [], []
    for m in body["messages"]:
        for part in (
            m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        ):
            if part["type"] == "text":
                text.append(part["text"])
            else:
                urls.append(part["image_url"]["url"])
    return "\n".join(text), urls


class EditScript:
    """Answers like a careful teacher would for the synthetic edits: the scores the pixels say.

    Items are known by their (source, edited) data URLs. `behaviour[(source, edited)]` overrides one item: "garbage" (no score), "long" (runs past max_tokens),
    "leak" (the rationale cites the report), "http500" (always 500), "slow" (sleeps `slow_s`), "unsure" (its
    scores come with probability `UNSURE_P`, every other score with `SURE_P`, in the logprobs the server returns
    when asked)."""

    def __init__(
        self,
        scores: dict[tuple[str, str], tuple[int, int]],
        behaviour: dict[tuple[str, str], str] | None = None,
    ) -> None:
        self.scores = scores
        self.behaviour = behaviour or {}
        self.slow_s = 3.0

    def __call__(self, body: dict[str, Any]) -> str | dict[str, Any] | tuple[int, str] | None:
        text, urls = _texts(body)
        pair = (urls[0], urls[1]) if len(urls) == 2 else ("", "")
        how = self.behaviour.get(pair, "")
        if how == "http500":
            return (500, "teacher crashed")
        if how == "slow":
            time.sleep(self.slow_s)
        if "Compare them" in text:
            return "Obvious change: red squares were added.\nDetailed differences: colour: new red squares."
        if "does NOT carry" in text:
            return REWRITTEN
        axis = "execution" if "Judge EXECUTION" in text else "consistency"
        if how == "garbage":
            return "I am not sure what to say about this edit."
        if how == "long":
            return "word " * 400
        k = self.scores[pair][0 if axis == "execution" else 1]
        if axis == "execution" and REWRITTEN in text:
            k = 1
        reasoning = f"The {axis} looks like a {k}."
        if how == "leak" and axis == "execution":
            reasoning = f"{LEAK} {reasoning}"
        text = f"Looking at both images.\n{json.dumps({'reasoning': reasoning, 'score': [k]})}"
        return {"text": text, "digit_probs": digit_probs(k, UNSURE_P if how == "unsure" else SURE_P)}


def edit_key(item: Any) -> tuple[str, str]:
    """How the scripted teacher recognises an item: its (source, edited) data URLs."""
    return image_data_url(item.source), image_data_url(item.edited)


def write_edit_manifest(
    root: Path, n: int, seed: int = 0
) -> tuple[Path, dict[str, tuple[int, int]], list[Any]]:
    """`n` synthetic edit pairs as PNG files + a manifest; returns (manifest, scores by edited data URL, items)."""
    items = synthetic_edit_items(n, seed=seed, size=32, requested=4)
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines, scores = [], {}
    for it in items:
        it.source.save(root / "img" / f"{it.id}-s.png")
        it.edited.save(root / "img" / f"{it.id}-e.png")
        lines.append({"id": it.id, "source": f"img/{it.id}-s.png", "edited": f"img/{it.id}-e.png",
                      "instruction": f"{it.instruction} ({it.id})"})  # fmt: skip
        scores[edit_key(it)] = (it.execution, it.consistency)
    manifest = root / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest, scores, items


class GenScript:
    """Plans, then scores each image as known; images (data URLs) in `unsure` are scored with `UNSURE_P`."""

    def __init__(
        self, scores: dict[str, int], leak: set[str] | None = None, unsure: set[str] | None = None
    ) -> None:
        self.scores, self.leak, self.unsure = scores, leak or set(), unsure or set()

    def __call__(self, body: dict[str, Any]) -> str | dict[str, Any] | tuple[int, str] | None:
        _, urls = _texts(body)
        if not urls:  # the planner
            return "1. Are there the requested red squares?\n2. Is nothing else drawn?"
        k = self.scores[urls[0]]
        extra = f"{GEN_LEAK}\n" if urls[0] in self.leak else ""
        text = f"1. Red squares: checked.\n{extra}The image matches {k}/5.\nFinal Alignment Rating: {k}\n\\boxed{{{k}}}"
        return {"text": text, "digit_probs": digit_probs(k, UNSURE_P if urls[0] in self.unsure else SURE_P)}


def write_gen_manifest(root: Path, n: int) -> tuple[Path, dict[str, int], list[Any]]:
    items = synthetic_gen_items(n, seed=1, size=32)
    (root / "gen").mkdir(parents=True, exist_ok=True)
    lines, scores = [], {}
    for it in items:
        it.image.save(root / "gen" / f"{it.id}.png")
        lines.append({"id": it.id, "prompt": f"{it.prompt} ({it.id})", "image": f"gen/{it.id}.png"})
        scores[image_data_url(it.image)] = it.instruction
    manifest = root / "gens.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest, scores, items
