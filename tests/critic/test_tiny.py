"""The tiny critic builder: offline tokenizer, chat template, processor trap, save/load through transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_tokenizer_has_single_digit_tokens_and_distinct_specials(tiny_critic_dir: Path) -> None:
    from firm.models.processors import FirmQwen3VLProcessor
    from firm.models.tiny import SPECIAL_TOKENS

    tok = FirmQwen3VLProcessor.from_pretrained(tiny_critic_dir).tokenizer
    digit_ids = [tok.encode(str(k), add_special_tokens=False) for k in range(1, 6)]
    assert all(len(ids) == 1 for ids in digit_ids)
    assert len({ids[0] for ids in digit_ids}) == 5
    # "[4]" keeps the digit as its own token, the property the expected readout relies on
    assert tok.convert_ids_to_tokens(tok.encode('"score": [4]}', add_special_tokens=False)).count("4") == 1
    special_ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(special_ids)) == len(SPECIAL_TOKENS)
    # special ids never collide with a learned token: encoding plain text never yields one
    text_ids = tok.encode("Make the red square blue. <image> score 5", add_special_tokens=False)
    assert not set(text_ids) & set(special_ids)
    assert tok.decode(text_ids) == "Make the red square blue. <image> score 5"


def test_chat_template_several_images_and_generation_prompt(tiny_critic_dir: Path) -> None:
    from firm.models.processors import FirmQwen3VLProcessor

    proc = FirmQwen3VLProcessor.from_pretrained(tiny_critic_dir)
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
    ]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "Compare.<|im_end|>\n<|im_start|>assistant\nDone.<|im_end|>\n"
    )
    gen = proc.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_auto_processor_trap_is_handled(tiny_critic_dir: Path) -> None:
    """Without torchvision AutoProcessor degrades to a tokenizer; `load_processor` builds FIRM's subclass."""
    from transformers import AutoProcessor

    from firm.critic.critic import load_processor
    from firm.models.processors import FirmQwen3VLProcessor

    auto = AutoProcessor.from_pretrained(tiny_critic_dir)
    proc = load_processor(str(tiny_critic_dir), "qwen3_vl")
    assert isinstance(proc, FirmQwen3VLProcessor)
    if getattr(auto, "image_processor", None) is None:  # the trap is present on this machine
        assert not isinstance(auto, FirmQwen3VLProcessor)
    assert proc.image_processor.patch_size == 14 and proc.image_processor.merge_size == 2


def test_built_directory_loads_through_transformers(tiny_critic_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    names = {p.name for p in tiny_critic_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    config = AutoConfig.from_pretrained(tiny_critic_dir)
    assert config.model_type == "qwen3_vl"
    assert config.text_config.hidden_size == 64 and config.text_config.num_hidden_layers == 2
    meta = json.loads((tiny_critic_dir / "firm_tiny_critic.json").read_text())
    assert meta["size"] == "tiny"
    model = AutoModelForImageTextToText.from_pretrained(tiny_critic_dir)
    assert model.config.text_config.vocab_size == model.get_input_embeddings().weight.shape[0]
    assert model.dtype == torch.float32


def test_same_seed_same_weights_and_unknown_size(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from firm.errors import InputError
    from firm.models.tiny import build_tiny_critic

    a = load_file(build_tiny_critic(tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build_tiny_critic(tmp_path / "b", seed=3) / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    with pytest.raises(InputError, match="unknown tiny critic size 'huge'"):
        build_tiny_critic(tmp_path / "c", size="huge")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="exists and is not an empty directory"):
        build_tiny_critic(tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # built atomically: no staging leftovers


def test_small_spec_is_consistent() -> None:
    """The 'small' size (built by the benchmark) has a valid rotary split and a larger decoder than 'tiny'."""
    from firm.models.tiny import SPECS

    for spec in SPECS.values():
        assert sum(spec.mrope_section) * 2 == spec.head_dim
        assert spec.text_heads % spec.text_kv_heads == 0
        assert spec.vision_hidden % spec.vision_heads == 0
    assert 256 <= SPECS["small"].text_hidden <= 512 and 4 <= SPECS["small"].text_layers <= 8


def test_drawn_images_are_real_pictures() -> None:
    from firm.models.images import edit_pair, png_bytes, shapes_image

    img = shapes_image([("square", "red"), ("circle", "blue")], size=(96, 64), text="hi")
    assert img.mode == "RGB" and img.size == (96, 64)
    colours = {c for _, c in img.getcolors(maxcolors=10_000)}
    assert (220, 30, 30) in colours and (30, 60, 220) in colours and (250, 250, 250) in colours
    src, dst, instruction = edit_pair("green", "red", "triangle")
    assert instruction == "Make the red triangle green."
    assert src.tobytes() != dst.tobytes()
    assert png_bytes(src)[:8] == b"\x89PNG\r\n\x1a\n"
