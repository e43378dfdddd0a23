"""Critic throughput: judgements/s for batch sizes 1, 4, 16, both readouts, tiny and small random-init critics.

Run (CPU, what BENCHMARKS.md reports):
    .venv/bin/python benchmarks/critic_scoring.py --sizes tiny small --threads 1 --repeats 3

On a GPU machine, also time a random-init model with Qwen3-VL-8B's architecture in bf16, 128 new tokens:
    python benchmarks/critic_scoring.py --arch qwen3-vl-8b --device cuda --dtype bfloat16 \\
        --batch-sizes 1 8 32 --max-new-tokens 128 --n 64

Every request is one edit axis (execution or consistency) of a 64×64 source/edited pair. The critics are untrained,
so every answer runs to `--max-new-tokens` (EOS is suppressed) and each batch does the same work; the expected
readout on an untrained critic includes its teacher-forced fallback (one extra forward pass per batch), so it is
the readout's worst case. Prints a Markdown table with judgements/s and the ratio to batch 1 / text readout of the
same model, all measured side by side in one run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

# Qwen3-VL-8B-Instruct's architecture (config.json of the public checkpoint), for random-init GPU timing.
QWEN3_VL_8B = {
    "text_config": {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 4096,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
}


def build_qwen3_vl_8b(out: Path, device: str, dtype: Any) -> Any:
    """A random-init Qwen3-VL-8B-architecture critic on `device` with the tiny tokenizer (ids < its vocab)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from firm.critic import Critic
    from firm.models.processors import QWEN_VL_CHAT_TEMPLATE, FirmQwen3VLProcessor, image_processor
    from firm.models.tiny import train_tokenizer

    tok = train_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>")}
    cfg = Qwen3VLConfig(
        **QWEN3_VL_8B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    cfg.text_config.pad_token_id = tok.pad_token_id
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dtype).eval()  # 8.77B parameters
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    proc = FirmQwen3VLProcessor(
        image_processor=image_processor(
            patch_size=16, merge_size=2, min_pixels=32 * 32, max_pixels=256 * 256
        ),
        tokenizer=tok,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    return Critic(model, proc)


def requests(n: int) -> list[Any]:
    from firm.critic import CriticRequest
    from firm.models.images import edit_pair

    colours = ["blue", "green", "yellow", "purple"]
    out = []
    for i in range(n):
        src, dst, instruction = edit_pair(colours[i % 4], "red", ("square", "circle", "triangle")[i % 3])
        axis = ("execution", "consistency")[i % 2]
        out.append(
            CriticRequest(
                task="edit", axis=axis, images=[src, dst], instruction=instruction, sample_id=str(i)
            )
        )
    return out


def time_critic(critic: Any, reqs: list[Any], batch_sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    import torch

    # suppress EOS so that every answer has exactly max_new_tokens tokens
    critic.model.generation_config.eos_token_id = None
    critic.stop_ids = set()
    sync = torch.cuda.synchronize if critic.device.type == "cuda" else (lambda: None)
    critic.judge(reqs[: max(batch_sizes)], readout="expected", batch_size=max(batch_sizes))  # warm-up
    configs = [(readout, bs) for readout in ("text", "expected") for bs in batch_sizes]
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(repeats):  # interleaved, best of `repeats`: robust to other load on a shared machine
        for readout, bs in configs:
            sync()
            t0 = time.perf_counter()
            js = critic.judge(reqs, readout=readout, batch_size=bs)
            sync()
            best[readout, bs] = min(best[readout, bs], time.perf_counter() - t0)
            assert len(js) == len(reqs)
    return [
        {"readout": readout, "batch": bs, "seconds": t, "jps": len(reqs) / t}
        for (readout, bs), t in best.items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    ap.add_argument("--arch", choices=["tiny-sizes", "qwen3-vl-8b"], default="tiny-sizes")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--n", type=int, default=32, help="requests (edit axes) per measurement")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many interleaved runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="e.g. bfloat16 (default: float32)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from firm.critic import Critic
    from firm.models.tiny import build_tiny_critic

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    reqs = requests(args.n)
    results: list[tuple[str, list[dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.arch == "qwen3-vl-8b":
            critic = build_qwen3_vl_8b(Path(tmp), args.device, dtype or torch.bfloat16)
            critic.max_new_tokens = args.max_new_tokens
            results.append(
                ("qwen3-vl-8b (random init)", time_critic(critic, reqs, args.batch_sizes, args.repeats))
            )
        else:
            for size in args.sizes:
                path = build_tiny_critic(Path(tmp) / size, size=size)
                critic = Critic.from_pretrained(
                    path, device=args.device, dtype=dtype, max_new_tokens=args.max_new_tokens
                )
                results.append((size, time_critic(critic, reqs, args.batch_sizes, args.repeats)))

    print(
        f"\n{args.n} edit judgements (64×64 source + edited), {args.max_new_tokens} new tokens each, "
        f"device={args.device}, dtype={args.dtype or 'float32'}, threads={torch.get_num_threads()}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}\n"
    )
    print("| critic | readout | batch | judgements/s | × vs batch 1, text |")
    print("|---|---|---:|---:|---:|")
    for name, rows in results:
        base = next(r["jps"] for r in rows if r["readout"] == "text" and r["batch"] == min(args.batch_sizes))
        for r in rows:
            print(f"| {name} | {r['readout']} | {r['batch']} | {r['jps']:.1f} | {r['jps'] / base:.2f} |")


if __name__ == "__main__":
    main()
