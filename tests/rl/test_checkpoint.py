"""Checkpoints: the exported LoRA loads with diffusers' load_lora_weights; a run killed with SIGKILL and resumed with
`--resume auto` from the object store (moto S3 over HTTP) ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.rl.conftest import tensorboard_tags


def test_final_lora_loads_with_load_lora_weights(tiny_cfg, tiny_sd3: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    from firm.rl.policies.pretrained import absent_components
    from firm.rl.trainer import Trainer

    cfg = tiny_cfg(
        steps=2,
        checkpoint__every_steps=1,
        checkpoint__export_merged=True,
        monitor__eval_every=2,
        monitor__tensorboard=True,
        data__eval_prompts='["a cat", "a dog"]',
    )
    trainer = Trainer(cfg)
    trainer.train(progress=False)
    out = Path(cfg.output_uri)
    assert (out / "checkpoints/step-00000001/MANIFEST.json").exists()
    assert (out / "checkpoints/step-00000002/trainer_state.pt").exists()
    assert (out / "run/samples/step-00000002.png").exists()
    lines = (out / "run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1]
    # the monitoring list reaches both JSONL and TensorBoard (and the eval grid is a TensorBoard image too)
    monitored = {
        "reward/mean",
        "reward/std",
        "reward/parse_failure_rate",
        "groups/zero_std_ratio",
        "loss/kl",
        "hacking/detail",
        "hacking/entropy",
        "time/rollout",
        "time/reward_wait",
        "time/update",
    }
    assert monitored <= set(json.loads(lines[-1]))
    scalars, images = tensorboard_tags(out / "run")
    assert monitored <= scalars and "eval/samples" in images

    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3), **absent_components(str(tiny_sd3)))
    pipe.load_lora_weights(str(out / "final/lora"))
    pol = trainer.policy
    cond = pol.encode(["a red apple"])
    x, s = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    with torch.no_grad(), trainer.ema_applied():  # the exported LoRA is the parameter EMA
        ours = pol.velocity(x, s, cond)
    with torch.no_grad():
        theirs = pipe.transformer(
            hidden_states=x,
            encoder_hidden_states=cond.tensors["prompt_embeds"],
            pooled_projections=cond.tensors["pooled"],
            timestep=s * 1000,
            return_dict=False,
        )[0]
        pipe.disable_lora()
        base = pipe.transformer(
            hidden_states=x,
            encoder_hidden_states=cond.tensors["prompt_embeds"],
            pooled_projections=cond.tensors["pooled"],
            timestep=s * 1000,
            return_dict=False,
        )[0]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(theirs, base, atol=1e-5)  # the LoRA did change the model
    assert (out / "checkpoints/step-00000002/metrics.jsonl").exists()

    # the merged export is a plain pipeline with the LoRA fused into the weights
    merged = StableDiffusion3Pipeline.from_pretrained(
        str(out / "final/merged"), **absent_components(str(tiny_sd3))
    )
    with torch.no_grad():
        fused = merged.transformer(
            hidden_states=x,
            encoder_hidden_states=cond.tensors["prompt_embeds"],
            pooled_projections=cond.tensors["pooled"],
            timestep=s * 1000,
            return_dict=False,
        )[0]
    assert torch.allclose(fused, ours, atol=1e-4)


def _train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "firm.rl.train", "--config", str(config), *extra]


def test_resume_after_kill_matches_uninterrupted(tiny_cfg, s3_env, tmp_path: Path, monkeypatch) -> None:
    from firm.rl.trainer import Trainer
    from firm.storage import init_buckets, latest

    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    from firm.config import get_settings

    get_settings(fresh=True)
    init_buckets()
    steps = 8
    data = tiny_cfg(
        steps=steps, as_dict=True, output_uri="s3://firm-checkpoints/rl-resume", checkpoint__every_steps=1
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(_train_cmd(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    prefix = "s3://firm-checkpoints/rl-resume/checkpoints"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        uri = latest(prefix)
        if uri and int(uri.rsplit("-", 1)[1]) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = uri
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    interrupted_step = int(latest(prefix).rsplit("-", 1)[1])  # type: ignore[union-attr]
    assert interrupted_step < steps  # it really was killed mid-run

    res = subprocess.run(
        _train_cmd(config, "--resume", "auto"), env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps"] == steps
    assert f"resumed from {prefix}/step-{interrupted_step:08d}" in res.stderr

    # the same run, uninterrupted, in this process (same config, one thread)
    ref = Trainer(tiny_cfg(steps=steps, output_uri=str(tmp_path / "ref")))
    ref.train(progress=False)
    from firm.storage import resolve_local

    resumed = load_file(
        str(resolve_local("s3://firm-checkpoints/rl-resume/final/lora") / "pytorch_lora_weights.safetensors")
    )
    uninterrupted = load_file(str(tmp_path / "ref/final/lora/pytorch_lora_weights.safetensors"))
    assert resumed.keys() == uninterrupted.keys() and len(resumed) > 0
    for k in resumed:
        assert torch.allclose(resumed[k], uninterrupted[k], atol=1e-6), k
    # and training did move the weights (lora_B starts at zero)
    assert any(float(v.abs().max()) > 0 for k, v in resumed.items() if "lora_B" in k)


@pytest.mark.parametrize("bad", ["sampling.group_size=1", "steps=0"])
def test_entrypoint_rejects_bad_config_with_one_line(tiny_cfg, tmp_path: Path, bad: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True)))
    res = subprocess.run(_train_cmd(config, bad), capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and bad.split("=")[0] in last


def test_policy_and_prompts_load_from_s3(
    tiny_cfg, tiny_sd3: Path, s3_env, tmp_path: Path, monkeypatch
) -> None:
    """A published pipeline directory and a prompt file in the object store (moto S3) are what a cluster run reads."""
    from firm.config import get_settings
    from firm.rl.policies.loading import load_policy
    from firm.rl.trainer import Trainer
    from firm.storage import init_buckets, publish_dir, write_bytes

    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    get_settings(fresh=True)
    init_buckets()
    publish_dir(tiny_sd3, "s3://firm-models/tiny-sd3")
    write_bytes("s3://firm-datasets/rl/prompts.txt", b"a red apple\na blue sky\n")
    cfg = tiny_cfg(
        steps=1, policy__uri="s3://firm-models/tiny-sd3", data__prompts="s3://firm-datasets/rl/prompts.txt"
    )
    trainer = Trainer(cfg)
    assert [p.prompt for p in trainer.prompts] == ["a red apple", "a blue sky"]
    assert str(tmp_path / "home") in trainer.policy.source  # fetched (manifest-verified) into the FIRM cache
    local = load_policy(tiny_cfg().policy, torch.device("cpu"))
    cond = local.encode(["a red apple"])
    x, s = torch.randn(1, 16, 4, 4), torch.tensor([0.5])
    with torch.no_grad():
        assert torch.equal(trainer.policy.velocity(x, s, cond), local.velocity(x, s, cond))
    assert len(trainer.train(progress=False)) == 1

    # editing prompt files may point at source images in the object store: a missing one fails up front
    import io

    from PIL import Image

    from firm.errors import InputError
    from firm.rl.data import load_prompts

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(png, format="PNG")
    write_bytes("s3://firm-datasets/rl/src-0.png", png.getvalue())
    line = '{"instruction": "make it red", "image": "s3://firm-datasets/rl/%s"}\n'
    write_bytes("s3://firm-datasets/rl/edits.jsonl", (line % "src-0.png" + line % "gone.png").encode())
    with pytest.raises(
        InputError, match=r"edits.jsonl:2: source image s3://firm-datasets/rl/gone.png does not"
    ):
        load_prompts("s3://firm-datasets/rl/edits.jsonl", "edit")
    write_bytes("s3://firm-datasets/rl/edits.jsonl", (line % "src-0.png").encode())
    (item,) = load_prompts("s3://firm-datasets/rl/edits.jsonl", "edit")
    assert item.source == "s3://firm-datasets/rl/src-0.png"


def test_fresh_run_into_an_existing_run_is_refused_and_latest_is_latest_written(
    tiny_cfg, tmp_path: Path
) -> None:
    """A rerun without --resume must not restart at step 0 over an existing run's checkpoints; `--resume auto`
    resumes from the checkpoint written last, never from a stale higher step."""
    from typer.testing import CliRunner

    from firm.cli.main import app
    from firm.errors import ConfigError
    from firm.rl.checkpoint import find_resume
    from firm.rl.trainer import Trainer
    from firm.storage import read_manifest

    data = tiny_cfg(as_dict=True, steps=3, checkpoint__every_steps=1)
    Trainer(tiny_cfg(steps=3, checkpoint__every_steps=1)).train(progress=False)
    prefix = data["output_uri"] + "/checkpoints"
    written = {s: read_manifest(f"{prefix}/step-{s:08d}").created_at for s in (1, 2, 3)}

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["rl", "train", "--config", str(config)])
    assert res.exit_code == 1 and res.stdout == "", res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: output_uri "), res.stderr
    assert "already exists and is not empty; pass --overwrite" in res.stderr and "--resume auto" in res.stderr
    with pytest.raises(ConfigError, match="already exists and is not empty"):  # `python -m firm.rl.train` too
        Trainer(tiny_cfg(steps=3, checkpoint__every_steps=1))
    assert {s: read_manifest(f"{prefix}/step-{s:08d}").created_at for s in (1, 2, 3)} == written

    # Continue from step 1 explicitly (allowed): step-2 is rewritten after step-3, which is now stale.
    Trainer(tiny_cfg(steps=2, checkpoint__every_steps=1, checkpoint__resume=f"{prefix}/step-00000001")).train(
        progress=False
    )
    assert read_manifest(f"{prefix}/step-00000002").created_at > written[3]
    assert find_resume("auto", data["output_uri"]).endswith(f"{prefix}/step-00000002")  # type: ignore[union-attr]
    res = CliRunner().invoke(app, ["rl", "train", "--config", str(config), "--resume", "auto"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps"] == 3
