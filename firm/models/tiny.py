"""Tiny random-init Qwen3-VL critics for tests and the local quickstart.

`build_tiny_critic(out_dir, size)` writes a complete, loadable critic directory with `save_pretrained`: a
`Qwen3VLForConditionalGeneration` with random weights, a byte-level BPE tokenizer trained offline on FIRM's rubric
texts (Qwen's special tokens and pre-tokenizer, so digits are single tokens), Qwen's chat template with any number
of images per message, and the image-only `FirmQwen3VLProcessor`. Sizes:

- `tiny`:  text hidden 64, 2 layers, vision hidden 32 / depth 2 (~0.1M parameters + embeddings); a 64×64 image is
  4 image tokens. For unit tests.
- `small`: text hidden 384, 6 layers, vision hidden 128 / depth 4. For benchmarks and SFT smoke runs.

Nothing is downloaded; the same directory layout as a real checkpoint, so `Critic.from_pretrained(dir)` exercises
the normal loading path.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

TinySize = Literal["tiny", "small"]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_pad|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
]
# Qwen2/3 pre-tokenizer split: contractions, letters, single digits, punctuation runs, newlines, spaces.
QWEN_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


class TinyCriticSpec(BaseModel):
    """Architecture of a tiny critic (text decoder + vision tower)."""

    name: TinySize
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    mrope_section: list[int]
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    vocab_size: int = 640
    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 28 * 28
    max_pixels: int = 112 * 112


SPECS: dict[str, TinyCriticSpec] = {
    "tiny": TinyCriticSpec(
        name="tiny",
        text_hidden=64,
        text_layers=2,
        text_heads=4,
        text_kv_heads=2,
        head_dim=16,
        mrope_section=[2, 3, 3],
        intermediate=128,
        vision_hidden=32,
        vision_depth=2,
        vision_heads=2,
        vision_intermediate=64,
    ),
    "small": TinyCriticSpec(
        name="small",
        text_hidden=384,
        text_layers=6,
        text_heads=6,
        text_kv_heads=2,
        head_dim=64,
        mrope_section=[12, 10, 10],
        intermediate=1024,
        vision_hidden=128,
        vision_depth=4,
        vision_heads=4,
        vision_intermediate=256,
        vocab_size=1024,
    ),
}


CORPUS_FILE = Path(__file__).with_name("tiny_corpus.txt")


def _corpus() -> list[str]:
    """Sentences to train the tiny tokenizer on: rubric texts and answers in the critics' formats.

    The rubric part is a frozen file (`tiny_corpus.txt`: the firm-v1 rubric lines, with their repetitions, as they
    were when the tiny models were tuned), so that editing a rubric pack does not change every test model's
    vocabulary; BPE learns from frequencies, so the repeated lines matter."""
    lines: list[str] = CORPUS_FILE.read_text(encoding="utf-8").splitlines()
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
    shapes = ["square", "circle", "triangle", "star", "cat", "dog", "car", "tree", "house", "person"]
    verbs = ["Add", "Remove", "Replace", "Change", "Make", "Turn", "Put", "Move"]
    for i in range(300):
        c, s, v = colours[i % 10], shapes[(i * 7) % 10], verbs[(i * 3) % 8]
        k = i % 5 + 1
        lines.append(f"{v} a {c} {s} to the picture.")
        lines.append(f"A photo of {k} {c} {s}s on a table.")
        lines.append(
            f'{{"reasoning": "The {c} {s} is {"present" if k > 2 else "missing"}.", "score": [{k}]}}'
        )
        lines.append(f"Final Alignment Rating: {k}\n\\boxed{{{k}}}")
        lines.append(f'{{"score": [{k}, {(k % 5) + 1}, {((k + 2) % 5) + 1}], "reasoning": "Sharp {c} {s}."}}')
    return lines


def train_tokenizer(vocab_size: int = 640) -> Any:
    """A byte-level BPE `Qwen2TokenizerFast` trained offline (<1 s) with Qwen's special tokens and split rule."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    state = json.loads(tok.to_str())
    # Re-number the learned tokens densely from 0; the special tokens are appended after them by the HF tokenizer.
    learned = sorted((i, t) for t, i in state["model"]["vocab"].items() if t not in SPECIAL_TOKENS)
    vocab = {t: new_id for new_id, (_, t) in enumerate(learned)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    hf_tok = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    return hf_tok


def build_tiny_critic(
    out_dir: str | Path, size: TinySize = "tiny", seed: int = 0, format_steps: int = 0
) -> Path:
    """Write a random-init tiny Qwen3-VL critic (model, tokenizer, processor) to `out_dir`; returns the path.

    `format_steps` > 0 first teaches the model FIRM's answer formats (see `teach_answer_formats`) so that its
    answers parse; 0 leaves it untrained (its answers are byte soup).
    """
    from firm.errors import InputError

    if size not in SPECS:
        raise InputError(f"unknown tiny critic size {size!r}; known: {', '.join(SPECS)}")
    spec = SPECS[size]
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _build(stage, spec, seed, format_steps)
        if out.exists():
            out.rmdir()
        stage.rename(out)  # atomic: the directory appears complete or not at all
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def _build(out: Path, spec: TinyCriticSpec, seed: int, format_steps: int) -> None:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from firm.models.processors import QWEN_VL_CHAT_TEMPLATE, FirmQwen3VLProcessor, image_processor

    tokenizer = train_tokenizer(spec.vocab_size)
    tokenizer.padding_side = "left"
    vocab_size = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.intermediate,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "head_dim": spec.head_dim,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": spec.mrope_section,
                "mrope_interleaved": True,
            },
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "bos_token_id": None,
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate,
            "num_heads": spec.vision_heads,
            "patch_size": spec.patch_size,
            "spatial_merge_size": spec.merge_size,
            "temporal_patch_size": 2,
            "out_hidden_size": spec.text_hidden,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.do_sample = False
    gen.eos_token_id = ids["<|im_end|>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.bos_token_id = None
    gen.temperature = None
    gen.top_p = None
    gen.top_k = None
    processor = FirmQwen3VLProcessor(
        image_processor=image_processor(
            patch_size=spec.patch_size,
            merge_size=spec.merge_size,
            min_pixels=spec.min_pixels,
            max_pixels=spec.max_pixels,
        ),
        tokenizer=tokenizer,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    if format_steps > 0:
        teach_answer_formats(model, processor, steps=format_steps, seed=seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    meta = {
        "seed": seed,
        "format_steps": format_steps,
        "size": spec.name,
        **spec.model_dump(exclude={"name"}),
    }
    (out / "firm_tiny_critic.json").write_text(json.dumps(meta, indent=2))


def format_example(task: str, axis: str, n_shapes: int) -> str:
    """The answer a format-taught tiny critic gives for an image with `n_shapes` shapes (score = n_shapes)."""
    k = n_shapes
    if axis == "quality":
        return f'{{"score": [{k}, {k}, {k}], "reasoning": "A clean drawing with {k} shapes."}}'
    if task == "gen":
        return f"The image shows {k} shapes.\nFinal Alignment Rating: {k}\n\\boxed{{{k}}}"
    return f'{{"reasoning": "The edited image shows {k} shapes.", "score": [{k}]}}'


def teach_answer_formats(
    model: Any, processor: Any, steps: int = 120, seed: int = 0, batch_size: int = 4
) -> None:
    """Fine-tune `model` in place for `steps` AdamW steps to answer every student rubric in its format.

    Items are drawn shape pictures; the target score is the number of shapes in the (last) image. In a few dozen
    steps the tiny model learns the answer formats, not the counting: its digits carry no meaning, but its answers
    parse and its digit distributions are spread out. A few seconds on CPU; the model is left in eval mode.
    """
    import random

    import torch

    from firm.critic.messages import build_messages, render_prompt
    from firm.models.images import shapes_image
    from firm.rewards.packs import get_rubric

    rng = random.Random(seed)
    torch.manual_seed(seed)
    tok = processor.tokenizer
    tok.padding_side = "right"
    axes = [("edit", "execution"), ("edit", "consistency"), ("gen", "instruction"), ("gen", "quality")]
    colours = ["red", "green", "blue", "yellow", "purple"]
    shapes = ["square", "circle", "triangle"]

    def item() -> tuple[str, list[Any], str]:
        task, axis = rng.choice(axes)
        rubric = get_rubric(task, axis)
        k = rng.randint(1, 5)
        items = [(rng.choice(shapes), rng.choice(colours)) for _ in range(k)]
        img = shapes_image(items, size=(64, 64))
        images = [shapes_image(items[:1], size=(64, 64)), img] if rubric.n_images == 2 else [img]
        answer = format_example(task, axis, k)
        msgs = build_messages(rubric, images, instruction="Add shapes to the picture.", prompt="Some shapes.")
        return render_prompt(processor, msgs), images, answer

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # Tiny matrices gain nothing from intra-op threads, and on a busy machine spinning threads cost ~10x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _teach_loop(model, processor, item, opt, steps, batch_size)
    finally:
        torch.set_num_threads(threads)
        tok.padding_side = "left"
        model.eval()


def _teach_loop(model: Any, processor: Any, item: Any, opt: Any, steps: int, batch_size: int) -> None:
    for _ in range(steps):
        batch = [item() for _ in range(batch_size)]
        prompts = [p for p, _, _ in batch]
        full = [p + a + "<|im_end|>" for p, _, a in batch]
        images = [im for _, ims, _ in batch for im in ims]
        enc = processor(text=full, images=images, padding=True, return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        for row, p in enumerate(prompts):
            n_prompt = len(processor(text=[p], images=batch[row][1], return_tensors="pt")["input_ids"][0])
            labels[row, :n_prompt] = -100
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
