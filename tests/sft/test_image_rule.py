"""One image rule for training and serving: the SFT collator's `pixel_values` / `image_grid_thw` equal the serving
critic's for the same image and bounds (a Qwen3-VL-style processor: patch 16 × merge 2 = 32, Qwen3-VL's default
bounds scaled by 1/16), for a non-square 1920×1080-shaped image and for a small one; the vLLM path sends the same
fitted images; an SFT run writes its recipe bounds into the processor it exports, which serving then reads."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from firm.curation.dataset import CriticSFTRow, DatasetInfo, SFTDataset

# Qwen3-VL-8B-Instruct's preprocessor_config.json: patch 16, merge 2, size 65536..16777216 pixels; scaled by 1/16
# (sides / 4) so the test stays small. The recipe budget likewise: 1003520 / 16.
PATCH, MERGE, MIN_PIXELS, MAX_PIXELS = 16, 2, 65536 // 16, 16777216 // 16
RECIPE_MAX = 1003520 // 16


@pytest.fixture(scope="module")
def qwen3_processor_dir(tmp_path_factory: pytest.TempPathFactory, tiny_critic_dir: Path) -> Path:
    """A saved tiny Qwen3-VL processor with Qwen3-VL's patch/merge sizes and (scaled) pixel bounds."""
    from transformers import AutoConfig

    from firm.critic.critic import load_processor
    from firm.models.processors import QWEN_VL_CHAT_TEMPLATE, FirmQwen3VLProcessor, image_processor

    tok = load_processor(
        str(tiny_critic_dir), AutoConfig.from_pretrained(tiny_critic_dir).model_type
    ).tokenizer
    out = tmp_path_factory.mktemp("qwen3-processor")
    FirmQwen3VLProcessor(
        image_processor=image_processor(
            patch_size=PATCH, merge_size=MERGE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
        ),
        tokenizer=tok,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    ).save_pretrained(out)
    return out


def _processor(path: Path) -> Any:
    from firm.critic.critic import load_processor

    return load_processor(str(path), "qwen3_vl")


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SFTDataset:
    """An edit row with a 1920×1080-shaped pair (480×270) and a gen row with a small 40×30 image."""
    root = tmp_path_factory.mktemp("rule-data")
    (root / "images").mkdir()
    for name, (w, h, seed) in {
        "wide.png": (480, 270, 1),
        "wide2.png": (480, 270, 2),
        "small.png": (40, 30, 3),
    }.items():
        _image(w, h, seed).save(root / "images" / name)
    rows = [
        CriticSFTRow(
            id="e", task="edit", axis="execution", images=["images/wide.png", "images/wide2.png"],
            instruction="make the sky red", target='{"reasoning": "done", "score": [4]}', score=4,
        ),
        CriticSFTRow(
            id="g", task="gen", axis="instruction", images=["images/small.png"], prompt="a red square",
            target="Final Alignment Rating: 3\n\\boxed{3}", score=3,
        ),
    ]  # fmt: skip
    return SFTDataset(root=root, info=DatasetInfo(name="rule", shards=[]), rows=rows)


def _request(row: CriticSFTRow, ds: SFTDataset, decoded: bool = False) -> Any:
    """The row as a serving request: image paths (the in-process critic loads them) or decoded images (what the
    reward models hand the vLLM path)."""
    from firm.critic.critic import CriticRequest
    from firm.images import load_image

    images = [ds.image_ref(i) for i in row.images]
    return CriticRequest(
        task=row.task, axis=row.axis, images=[load_image(i) for i in images] if decoded else images,
        instruction=row.instruction, prompt=row.prompt, sample_id=row.id,
    )  # fmt: skip


def _serving_encoding(critic: Any, req: Any) -> Any:
    """What the serving critic feeds its model for one request (`Critic.judge`'s own prepare and encode)."""
    prepared = critic._prepare(req, 0)
    return critic._encode([prepared[1]], prepared[2], critic._batch_size([prepared]))


@pytest.mark.parametrize("budget", [RECIPE_MAX, None])
def test_training_batch_equals_serving_encoding(
    qwen3_processor_dir: Path, tiny_critic_dir: Path, dataset: SFTDataset, budget: int | None
) -> None:
    from transformers import AutoModelForImageTextToText

    from firm.critic.collate import SFTCollator
    from firm.critic.critic import Critic

    processor = _processor(qwen3_processor_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_critic_dir)  # only its config/device matter here
    critic = Critic(model, processor, max_pixels=budget)
    collator = SFTCollator(processor, dataset, max_pixels=budget)
    grids = []
    for row in dataset.rows:
        train = collator.encode(row)
        serve = _serving_encoding(critic, _request(row, dataset))
        assert torch.equal(train["image_grid_thw"], serve["image_grid_thw"]), row.id
        assert torch.equal(train["pixel_values"], serve["pixel_values"]), row.id
        grids.append(train["image_grid_thw"].tolist())
    wide, small = grids[0][0], grids[1][0]
    if budget is not None:  # 480×270 under 62720 pixels: one resize to 320×160 (sides multiples of 32)
        assert wide == [1, 160 // PATCH, 320 // PATCH]
    else:  # the processor's bounds: 480×270 → 480×256 (the 1920×1080 → 1920×1088 of the full-size model)
        assert wide == [1, 256 // PATCH, 480 // PATCH]
    assert small == [
        1,
        32 // PATCH,
        32 // PATCH,
    ]  # not enlarged to the processor's 4096-pixel minimum (firm-v1)
    rows = dataset.rows
    encoded = [collator.encode(r) for r in rows]
    assert [m.tokens for m in collator.measure(rows)] == [len(e["input_ids"]) for e in encoded]


def test_vllm_path_sends_the_training_images(qwen3_processor_dir: Path, dataset: SFTDataset) -> None:
    from firm.critic.collate import SFTCollator
    from firm.serving.backend.vllm_critic import render_request

    processor = _processor(qwen3_processor_dir)
    collator = SFTCollator(processor, dataset, max_pixels=RECIPE_MAX)
    for row in dataset.rows:
        _, sent = render_request(processor, _request(row, dataset, decoded=True), RECIPE_MAX)
        decoded = [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB") for b in sent]
        trained = collator.load_images(row)
        assert [im.size for im in decoded] == [im.size for im in trained]
        assert [im.tobytes() for im in decoded] == [im.tobytes() for im in trained]


def test_sft_run_records_its_bounds_for_serving(
    qwen3_processor_dir: Path, tiny_critic_dir: Path, dataset: SFTDataset, tmp_path: Path
) -> None:
    """`model.max_pixels` is written into the processor the run trains with and exports; the exported critic,
    loaded with no budget, encodes the training batch's images."""
    import shutil

    from firm.critic.collate import SFTCollator
    from firm.critic.critic import Critic
    from firm.critic.sft import load_model
    from firm.critic.sft_config import SFTConfig
    from firm.images import processor_pixel_rule
    from tests.sft.helpers import sft_config

    base = tmp_path / "base"
    shutil.copytree(tiny_critic_dir, base)
    for f in qwen3_processor_dir.iterdir():  # the Qwen3-VL-style processor in place of the tiny one
        shutil.copy(f, base / f.name)
    cfg = SFTConfig.model_validate(sft_config(base, dataset.root, tmp_path, model__max_pixels=RECIPE_MAX))
    model, processor = load_model(cfg, torch.float32, None)
    assert processor_pixel_rule(processor).max_pixels == RECIPE_MAX
    assert processor_pixel_rule(processor).min_pixels == MIN_PIXELS  # kept: the recipe sets no min_pixels
    export = tmp_path / "export"
    model.save_pretrained(export)
    processor.save_pretrained(export)
    served = Critic.from_pretrained(export)
    assert served.processor_max_pixels == RECIPE_MAX
    collator = SFTCollator(processor, dataset)  # what firm.critic.sft builds: no explicit budget
    row = dataset.rows[0]
    assert torch.equal(
        collator.encode(row)["pixel_values"],
        _serving_encoding(served, _request(row, dataset))["pixel_values"],
    )
