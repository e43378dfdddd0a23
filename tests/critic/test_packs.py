"""The Critic asks with its rubric pack: with the imported official pack its model input equals a hand-built
reference of the official server's request; per-rubric answer budgets cut answers, which then read `truncated`;
a critic trained with another pack is warned about."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from firm.critic import Critic, CriticRequest
from firm.models.images import shapes_image
from firm.rewards.packs import dump_pack, load_pack, parse_pack, write_provenance
from firm.rubric_store import import_official

OFFICIAL_LAYOUT = Path(__file__).parents[1] / "rewards" / "official_layout"


def _jpeg(img: Image.Image) -> Image.Image:
    """What the official reward client sends: `img.save(buffer, format="JPEG")` (PIL defaults), decoded."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def test_official_pack_feeds_what_the_official_server_feeds(tiny_critic_dir: Path) -> None:
    import importlib.util

    pack = import_official(str(OFFICIAL_LAYOUT))
    critic = Critic.from_pretrained(tiny_critic_dir, rubrics=pack)
    src = shapes_image([("circle", "red")], size=(90, 50))
    edited = shapes_image([("square", "blue"), ("circle", "red")], size=(90, 50))
    instruction = "Add a blue square."
    req = CriticRequest(task="edit", axis="execution", images=[src, edited], instruction=instruction)
    _, prompt, images = critic._prepare(req, 0)
    got = critic._encode([prompt], images, critic._batch_size([(req, prompt, images)]))

    # the reference, built by hand the way reward_server_qwen3_vl_8b_sft.py builds its vLLM chat request
    spec = importlib.util.spec_from_file_location(
        "official_edit", OFFICIAL_LAYOUT / "editing/reward_server/prompt_template.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.SCORE_EXECUTION.format(prompt=instruction, requirement="")
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}
    ]
    proc = critic.processor
    chat = proc.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ref = proc(text=[chat], images=[_jpeg(src), _jpeg(edited)], return_tensors="pt")

    assert got["input_ids"].tolist() == ref["input_ids"].tolist()
    assert got["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
    assert torch.allclose(got["pixel_values"], ref["pixel_values"], atol=0.15)
    # and the JPEG round trip is really there: firm-v1 sends the lossless pixels
    v1 = Critic(critic.model, critic.processor)
    _, _, v1_images = v1._prepare(req, 0)
    assert v1_images[0].tobytes() != images[0].tobytes()


def test_answer_budgets_per_rubric_and_truncated_status(formatted_critic_dir: Path, tmp_path: Path) -> None:
    src = shapes_image([("circle", "red")], size=(56, 56))
    edited = shapes_image([("circle", "blue")], size=(56, 56))
    reqs = [
        CriticRequest(task="edit", axis=axis, images=[src, edited], instruction="Make the circle blue.")
        for axis in ("execution", "consistency")
    ]
    full = Critic.from_pretrained(formatted_critic_dir)
    assert [j.status for j in full.judge(reqs)] == ["ok", "ok"]

    # the pack gives execution a 4-token budget and leaves consistency alone; both run in one batch
    data = yaml.safe_load(dump_pack(load_pack()))
    for r in data["rubrics"]:
        if r["axis"] == "execution":
            r["generation"]["max_new_tokens"] = 4
    short = parse_pack(yaml.safe_dump(data), "short")
    critic = Critic(full.model, full.processor, rubrics=short)
    ex, co = critic.judge(reqs, batch_size=2)
    assert ex.status == "truncated" and ex.score is None
    assert len(critic.tokenizer(ex.raw_text, add_special_tokens=False)["input_ids"]) <= 4
    assert co.status == "ok" and co.raw_text == full.judge(reqs)[1].raw_text
    # an explicit budget overrides the pack for every rubric
    capped = Critic(full.model, full.processor, max_new_tokens=3)
    assert {j.status for j in capped.judge(reqs)} == {"truncated"}
    # enough room → the same answers as with the pack's budget
    roomy = Critic(full.model, full.processor, max_new_tokens=200)
    assert [j.raw_text for j in roomy.judge(reqs)] == [j.raw_text for j in full.judge(reqs)]


def test_loading_warns_when_the_critic_learned_another_pack(
    tiny_critic_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    critic_dir = tmp_path / "critic"
    shutil.copytree(tiny_critic_dir, critic_dir)
    other = load_pack().model_copy(update={"name": "other"})
    write_provenance(critic_dir, other)
    with caplog.at_level(logging.WARNING, logger="firm.rewards.packs"):
        Critic.from_pretrained(critic_dir)
    assert any("was trained with rubric pack other@" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="firm.rewards.packs"):
        Critic.from_pretrained(critic_dir, rubrics=other)
    assert not caplog.records
