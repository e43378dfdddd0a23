"""FIRM-Bench costs: metrics and reports at the real bench size, and critic throughput per backend.

Run:  .venv/bin/python benchmarks/firm_bench.py [--items 16] [--max-new-tokens 24]

1. `compute_report` on a FIRM-Bench-sized set (301 execution + 256 consistency + 250 gen items, random scores, 5%
   parse failures) with and without the bootstrap CI, and `write_report` (JSON, Markdown, 2 PNGs, HTML).
2. Items/s judging a synthetic bench with the tiny critic: in-process (`LocalCriticBackend`, batch 1 with torch's
   default intra-op threads and with 1 thread, batch 8) and over HTTP (`OpenAICompatibleBackend` against the test
   chat-completions server that runs the same model in its request threads; concurrency 1 vs 4). All in one run,
   so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test chat server lives in tests/bench


def _best(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def metrics_rows() -> list[tuple[str, float, str]]:
    from firm.bench.metrics import compute_report
    from firm.bench.records import HumanScore
    from firm.bench.report import write_report

    rng = random.Random(0)
    humans = [
        HumanScore(id=f"x{i}", task="edit", axis="execution", human_score=rng.randint(1, 5))
        for i in range(301)
    ]
    humans += [
        HumanScore(id=f"c{i}", task="edit", axis="consistency", human_score=rng.randint(1, 5))
        for i in range(256)
    ]
    humans += [
        HumanScore(
            id=f"g{i}",
            task="gen",
            axis="instruction",
            difficulty="easy" if i % 2 else "hard",
            human_score=rng.randint(1, 5),
        )
        for i in range(250)
    ]
    preds = {h.id: (None if rng.random() < 0.05 else rng.randint(1, 5)) for h in humans}
    t0 = _best(lambda: compute_report(humans, preds, n_boot=0))
    t1 = _best(lambda: compute_report(humans, preds, n_boot=1000))
    rep = compute_report(humans, preds)
    with tempfile.TemporaryDirectory() as tmp:
        t2 = _best(lambda: write_report(rep, tmp, critic="bench"))
    return [
        ("compute_report, 807 items, no bootstrap (reference)", t0 * 1e3, "1.0"),
        ("compute_report, 807 items, bootstrap 1000", t1 * 1e3, f"{t1 / t0:.1f}"),
        ("write_report (json, md, 2 PNG, html)", t2 * 1e3, f"{t2 / t0:.1f}"),
    ]


def throughput_rows(n_items: int, max_new_tokens: int) -> list[tuple[str, float, str]]:
    from firm.bench.backends import LocalCriticBackend, OpenAICompatibleBackend
    from firm.bench.synthetic import make_synthetic_bench
    from firm.critic import Critic
    from firm.models.tiny import build_tiny_critic
    from tests.bench.openai_server import serve

    with tempfile.TemporaryDirectory() as tmp:
        critic_dir = build_tiny_critic(Path(tmp) / "critic", size="tiny")
        bench = make_synthetic_bench(Path(tmp) / "bench", n_items // 2, size=56)
        items = bench.items
        critic = Critic.from_pretrained(critic_dir, max_new_tokens=max_new_tokens)
        import torch

        rows: list[tuple[str, float]] = []
        default_threads = torch.get_num_threads()
        for threads, bs in ((default_threads, 1), (1, 1), (1, 8)):
            torch.set_num_threads(threads)
            lb = LocalCriticBackend("tiny", critic=critic, batch_size=bs)
            lb.judge(items[:2], bench)  # warm-up
            rate = len(items) / _best(lambda lb=lb: lb.judge(items, bench), 2)
            rows.append((f"local critic, batch {bs}, torch threads {threads}", rate))
        with serve(critic) as (_, url):
            for conc in (1, 4):
                oa = OpenAICompatibleBackend(
                    url, "firm-tiny-critic", concurrency=conc, max_tokens=max_new_tokens
                )
                oa.judge(items[:2], bench)
                rate = len(items) / _best(lambda oa=oa: oa.judge(items, bench), 2)
                rows.append((f"OpenAI-compatible HTTP, concurrency {conc}, torch threads 1", rate))
    ref = rows[0][1]
    return [(name, v, f"{v / ref:.2f}") for name, v in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    args = ap.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}\n")
    print("| metrics / report | ms | × reference |\n|---|---:|---:|")
    for name, ms, ratio in metrics_rows():
        print(f"| {name} | {ms:.1f} | {ratio} |")
    print(
        f"\n| critic backend ({args.items} items, {args.max_new_tokens} new tokens) | items/s | × local batch 1 |"
    )
    print("|---|---:|---:|")
    for name, ips, ratio in throughput_rows(args.items, args.max_new_tokens):
        print(f"| {name} | {ips:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
