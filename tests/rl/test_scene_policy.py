"""The scene policies (`firm.rl.policies.tiny_scene`) and the quickstart's warm-up of them: the hand-set VAE is a
colour autoencoder of the synthetic critic world, the pipelines load through the Qwen-Image-Edit and Qwen-Image
adapters at 16× downsampling, and the flow-matching warm-up learns (its loss falls) and lands atomically."""

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


def _policy(task: str, path: Path):
    from firm.quickstart.policy import policy_config
    from firm.rl.policies.loading import load_policy

    return load_policy(policy_config(task, path, 128), torch.device("cpu"))  # type: ignore[arg-type]


def test_scene_pipelines_load_through_the_adapters(tmp_path: Path) -> None:
    from firm.rl.policies.tiny import build_tiny_qwen_edit
    from firm.rl.policies.tiny_qwen_image import build_tiny_qwen_image

    item = synthetic_edit_items(1, seed=2, size=128, requested=4)[0]
    for task, build in (("edit", build_tiny_qwen_edit), ("gen", build_tiny_qwen_image)):
        pol = _policy(task, build(tmp_path / task, scene=True))
        assert pol.vae_scale == 16
        cond = pol.encode([item.instruction], [item.source] if task == "edit" else None)
        x0 = pol.image_latents([item.edited])
        assert x0.shape == (1, 16, 16), task  # 4 × 4 tokens of 2 × 2 × 4 latents
        if task == "edit":  # the source conditioning is the same encoding
            assert torch.equal(cond.tensors["image_latents"], pol.image_latents([item.source]))
        # the adapter's decode of an image's own latents gives the image back (block colours)
        back = (pol.decode(x0, cond)[0].permute(1, 2, 0).numpy() * 255).round()
        src = np.asarray(item.edited).astype(float)
        assert np.abs(back[32::64, 32::64] - src[32::64, 32::64]).max() <= 40, task
        v = pol.velocity(
            pol.initial_noise(1, torch.Generator().manual_seed(0), cond), torch.tensor([1.0]), cond
        )
        assert v.shape == x0.shape


@pytest.mark.parametrize("task", ["edit", "gen"])
def test_warm_up_learns_and_saves_atomically(task: str, tmp_path: Path) -> None:
    from firm.quickstart.policy import build_policy, read_warmup

    out = tmp_path / "policy"
    w = build_policy(task, out, steps=60, items=16, resolution=128, image_size=112, batch_size=16)  # type: ignore[arg-type]
    assert w.last_loss < 0.6 * w.first_loss, w
    assert (out / "model_index.json").is_file() and not (tmp_path / "policy.staging").exists()
    assert read_warmup(out) == w
    assert read_warmup(tmp_path) is None
    assert _policy(task, out).transformer.config.in_channels == 16  # it loads back as an RL policy
