"""Cost of turning critic text into rewards: parse_answer per format/shape, and edit_reward / gen_reward.

Run:  .venv/bin/python benchmarks/reward_parsing.py [--repeat 2000]

Prints a Markdown table: µs per call and the ratio to the stdlib `json.loads` of the same short answer
(the cheapest thing a parser could do), all measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit

from firm.rewards.formulas import edit_reward, gen_reward
from firm.rewards.parsing import parse_answer
from firm.schemas import Judgement

LONG = "The umbrella is now blue; the woman, the rain and the street are unchanged. " * 50  # ~3.8 KB
GEN = (
    "Requirements:\n"
    + "".join(f"{i}. requirement {i} - satisfied, the image shows it clearly.\n" for i in range(1, 30))
    + "Final analysis: all main content right.\nFinal Alignment Rating: 4\n\\boxed{4}"
)
SHORT_EDIT = '{"reasoning": "The hat was added as requested.", "score": [5]}'

CASES: list[tuple[str, str, str]] = [
    ("edit, short JSON", "edit", SHORT_EDIT),
    (
        "edit, 3.8 KB rationale in a code fence",
        "edit",
        '```json\n{"reasoning": "' + LONG + '", "score": [4]}\n```',
    ),
    ("edit, broken JSON → regex fallback", "edit", '{"reasoning": "the "red" car", "score": [2]}'),
    ("edit, unparseable prose (3.8 KB)", "edit", LONG),
    ("gen, 2 KB analysis + rating + boxed", "gen", GEN),
    ("quality, short JSON", "quality", '{"score": [4, 3, 5], "reasoning": "sharp, slight noise"}'),
]


def _us(fn, repeat: int) -> float:
    best = min(timeit.repeat(fn, number=repeat, repeat=5))
    return best / repeat * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()

    base = _us(lambda: json.loads(SHORT_EDIT), args.repeat)
    rows = [("stdlib json.loads, short edit JSON (reference)", base)]
    for name, fmt, text in CASES:
        rows.append((f"parse_answer: {name}", _us(lambda f=fmt, t=text: parse_answer(f, t), args.repeat)))

    def j(task: str, axis: str, score: object) -> Judgement:
        return Judgement(task=task, axis=axis, status="ok", score=score)  # type: ignore[arg-type]

    e, c = j("edit", "execution", 5), j("edit", "consistency", 2)
    i, q = j("gen", "instruction", 4), j("gen", "quality", [4, 3, 5])
    rows.append(("edit_reward (CME) from two judgements", _us(lambda: edit_reward(e, c), args.repeat)))
    rows.append(("gen_reward (QMA) from two judgements", _us(lambda: gen_reward(i, q), args.repeat)))

    print(f"Python {platform.python_version()} on {platform.machine()}, best of 5 × {args.repeat} calls\n")
    print("| operation | µs / call | × json.loads |")
    print("|---|---:|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} | {us / base:.1f} |")


if __name__ == "__main__":
    main()
