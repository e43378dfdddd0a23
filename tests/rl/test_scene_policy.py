"""The scene policy (`firm.rl.policies.tiny_scene`) and the quickstart's warm-up of it: the hand-set VAE is a colour
autoencoder of the synthetic critic world, the pipeline loads through the Qwen-Image-Edit adapter at 16×
downsampling, and the flow-matching warm-up learns (its loss falls) and lands atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from firm.curation.synthetic import BACKGROUND, RED, synthetic_edit_items


def _tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).float().permute(2, 0, 1)[None, :, None] / 127.5 - 1


def _pixels(x: torch.Tensor) -> np.ndarray:
    return ((x[0, :, 0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).round().byte().numpy()


def test_scene_vae_round_trips_the_synthetic_scenes() -> None:
    from firm.rl.policies.tiny_scene import scene_vae

    vae = scene_vae().eval()
    item = synthetic_edit_items(1, seed=1, size=128, requested=4)[0]
    with torch.no_grad():
        z = vae.encode(_tensor(item.edited)).latent_dist.mode()
        out = _pixels(vae.decode(z).sample)
    assert z.shape == (1, 4, 1, 8, 8)  # 16× downsampling, 4 latent channels
    # channel 3 unused; unit-scale colour components
    assert torch.all(z[:, 3] == 0) and 0.5 < z[:, :3].abs().mean() < 1.5
    src = np.asarray(item.edited)
    # every cell's centre (a red square or the background) and its corner (background or tint) keep their colour
    for cy in (0, 64):
        for cx in (0, 64):
            for y, x in ((cy + 32, cx + 32), (cy + 8, cx + 8)):
                diff = np.abs(out[y, x].astype(int) - src[y, x].astype(int)).max()
                assert diff <= 40, (y, x, out[y, x], src[y, x])
    # grey decodes to the scenes' background and red to red
    flat = torch.tensor([[*BACKGROUND], [*RED]], dtype=torch.float32)
    for rgb in flat:
        img = (rgb[:, None, None].expand(3, 32, 32) / 127.5 - 1)[None, :, None]
        with torch.no_grad():
            back = _pixels(vae.decode(vae.encode(img).latent_dist.mode()).sample)[16, 16]
        assert np.abs(back.astype(int) - rgb.numpy().astype(int)).max() <= 15, (rgb, back)


@pytest.fixture(scope="module")
def scene_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from firm.rl.policies.tiny import build_tiny_qwen_edit

    return build_tiny_qwen_edit(tmp_path_factory.mktemp("scene") / "policy", scene=True)


def test_scene_pipeline_loads_through_the_edit_adapter(scene_policy: Path) -> None:
    from firm.quickstart.policy import CONDITION_PIXELS, MAX_SEQUENCE_LENGTH
    from firm.rl.config import PolicyConfig
    from firm.rl.policies.loading import load_policy

    cfg = PolicyConfig(
        kind="qwen_edit", uri=str(scene_policy), resolution=128, max_sequence_length=MAX_SEQUENCE_LENGTH,
        condition_pixels=CONDITION_PIXELS, prompt_template_drop=0,
    )  # fmt: skip
    pol = load_policy(cfg, torch.device("cpu"))
    assert pol.vae_scale == 16
    item = synthetic_edit_items(1, seed=2, size=128, requested=4)[0]
    cond = pol.encode([item.instruction], [item.source])
    x0 = pol.image_latents([item.edited])
    assert x0.shape == (1, 16, 16)
    assert torch.equal(cond.tensors["image_latents"], pol.image_latents([item.source]))
    # the adapter's decode of an image's own latents gives the image back (block colours)
    back = (pol.decode(x0, cond)[0].permute(1, 2, 0).numpy() * 255).round()
    src = np.asarray(item.edited).astype(float)
    assert np.abs(back[32::64, 32::64] - src[32::64, 32::64]).max() <= 40
    v = pol.velocity(pol.initial_noise(1, torch.Generator().manual_seed(0), cond), torch.tensor([1.0]), cond)
    assert v.shape == x0.shape


def test_warm_up_learns_and_saves_atomically(tmp_path: Path) -> None:
    from firm.quickstart.policy import build_edit_policy, read_warmup

    out = tmp_path / "policy"
    w = build_edit_policy(out, steps=60, items=16, resolution=128, image_size=112, batch_size=16)
    assert w.last_loss < 0.6 * w.first_loss, w
    assert (out / "model_index.json").is_file() and not (tmp_path / "policy.staging").exists()
    assert read_warmup(out) == w
    assert read_warmup(tmp_path) is None
