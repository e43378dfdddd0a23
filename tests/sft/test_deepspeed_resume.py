"""DeepSpeed ZeRO-2/3 runs on the tiny critic: they train and export, and a run killed with SIGKILL right after a
checkpoint continues with `--resume auto` exactly as the uninterrupted run (checkpoints in the S3 test store, every
ZeRO shard in the manifest and sha256-verified; a tampered shard is refused).

Per configuration: ONE uninterrupted reference run (4 steps, cosine schedule with warmup so the LR state matters)
that publishes step-2 on its way, and a run resumed from a step-2 checkpoint that must log the reference's steps 3-4.
In the one-process ZeRO-2 configuration that checkpoint comes from a run SIGKILLed right after publishing it (a
deterministic test hook, no polling) and resumed with `--resume auto`; the 2-process configurations resume from the
reference's own step-2 (a published checkpoint is complete whether or not its writer lived on; the kill is exercised
once here, a multi-process job stopped mid-run and resubmitted in tests/launch/test_local_backend.py). The pickle-free
state codec is checked on its own at the end."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from firm.critic.sft import KILL_AFTER_CHECKPOINT_ENV, TrainResult
from tests._threads_after_main import assert_no_backend_threads, run_ranks
from tests.sft.helpers import sft_config, train_losses, write_config

REPO = Path(__file__).resolve().parents[2]
STEPS, KILL_AT = 4, 2


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _launch(config: Path, nproc: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the SFT entry point; on `nproc` > 1 torchrun ranks, a run that succeeds must also have ended its process
    groups before its ranks exit (no gloo thread left after `main`: DeepSpeed's engine would otherwise hold them)."""
    sft_args = ["--config", str(config), *args]
    if nproc == 1:
        cmd = [sys.executable, "-m", "firm.critic.sft", *sft_args]
        return subprocess.run(
            cmd, env=_env(**env), capture_output=True, text=True, timeout=300, start_new_session=True
        )
    threads = Path(tempfile.mkdtemp(prefix="threads-", dir=config.parent))
    proc, ranks = run_ranks("firm.critic.sft", sft_args, threads, nproc, env=_env(**env))
    if proc.returncode == 0:
        assert_no_backend_threads(ranks, nproc)
    return proc


def _config(
    model: Path, data: Path, tmp: Path, bucket: str, name: str, nproc: int, stage: int
) -> dict[str, Any]:
    return sft_config(
        model, data, tmp, run_name=name, max_steps=STEPS, batch__per_device=8 // nproc, batch__global_size=8,
        optim={"lr": 2e-3, "scheduler": "cosine", "warmup_ratio": 0.25, "max_grad_norm": 1.0},
        eval__max_samples=2, eval__max_new_tokens=8, checkpoint__every_n_steps=KILL_AT,
        checkpoint__uri=f"s3://{bucket}/checkpoints/{tmp.name}/{name}",
        dist={"strategy": "deepspeed", "zero_stage": stage},
    )  # fmt: skip


def _kill_and_resume(
    model: Path, data: Path, tmp: Path, bucket: str, nproc: int, stage: int, tamper: bool = False,
    kill: bool = True,
) -> tuple[TrainResult, TrainResult]:  # fmt: skip
    """(uninterrupted reference, resumed run) for one configuration; `kill=False` resumes from the reference's own
    step-2 checkpoint instead of a killed run's."""
    from firm.storage import latest, read_manifest

    name = f"z{stage}-{nproc}p"
    ref_cfg = _config(model, data, tmp / "ref", bucket, name, nproc, stage)
    ref = _launch(write_config(ref_cfg, tmp / "ref.yaml"), nproc)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = TrainResult.model_validate_json(ref.stdout.strip().splitlines()[-1])

    cfg = _config(model, data, tmp / "cut", bucket, name, nproc, stage)
    config = write_config(cfg, tmp / "cut.yaml")
    if not kill:
        step2 = f"{ref_cfg['checkpoint']['uri']}/step-{KILL_AT}"
        assert step2 in reference.checkpoints, reference.checkpoints
        assert {f"zero/rank-{r:05d}.safetensors" for r in range(nproc)} <= {
            f.path for f in read_manifest(step2).files
        }
        res = _launch(config, nproc, "--resume", step2)
        assert res.returncode == 0, res.stderr[-3000:]
        resumed = TrainResult.model_validate_json(res.stdout.strip().splitlines()[-1])
        assert resumed.resumed_from == step2 and resumed.steps == STEPS
        _same_steps_after_the_cut(reference, resumed)
        return reference, resumed
    killed = _launch(config, nproc, **{KILL_AFTER_CHECKPOINT_ENV: str(KILL_AT)})
    if nproc == 1:
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    else:  # torchrun reports its workers' deaths by signal 9
        assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    root = cfg["checkpoint"]["uri"]
    assert latest(root) == f"{root}/step-{KILL_AT}"
    files = {f.path for f in read_manifest(f"{root}/step-{KILL_AT}").files}
    assert {f"zero/rank-{r:05d}.safetensors" for r in range(nproc)} | {
        "trainer_state.json",
        "scheduler.pt",
    } <= files
    assert "optimizer.pt" not in files
    if tamper:
        _tampered_shard_is_refused(cfg, root)

    res = _launch(config, nproc, "--resume", "auto")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = TrainResult.model_validate_json(res.stdout.strip().splitlines()[-1])
    assert resumed.resumed_from == f"{root}/step-{KILL_AT}" and resumed.steps == STEPS
    # the killed run's steps, then the resumed run's own
    assert sorted(train_losses(resumed.run_dir)) == list(range(1, STEPS + 1))
    _same_steps_after_the_cut(reference, resumed)
    return reference, resumed


def _same_steps_after_the_cut(reference: TrainResult, resumed: TrainResult) -> None:
    a, b = train_losses(reference.run_dir), train_losses(resumed.run_dir)
    for step in range(KILL_AT + 1, STEPS + 1):  # steps the resumed process computed
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), (step, a, b)
    assert a[STEPS] != pytest.approx(a[KILL_AT + 1], rel=1e-3)  # the compared steps did train


def _tampered_shard_is_refused(cfg: dict[str, Any], root: str) -> None:
    """Flip one byte of rank 0's ZeRO shard in the store: resuming refuses it (sha256) before any training."""
    from firm.critic.sft import train
    from firm.critic.sft_config import SFTConfig
    from firm.errors import StorageError
    from firm.storage import open_store

    store, key = open_store(f"{root}/step-{KILL_AT}/zero/rank-00000.safetensors")
    good = store.get_bytes(key)
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    store.put_bytes(key, bytes(bad))
    try:
        with pytest.raises(StorageError, match=r"rank-00000\.safetensors: checksum mismatch"):
            train(SFTConfig.model_validate({**cfg, "resume": "auto"}))
    finally:
        store.put_bytes(key, good)


def test_zero2_one_process_resumes_exactly_and_refuses_a_tampered_shard(
    tiny_critic_dir: Path, sft_dataset: Path, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    from tests.sft.test_train import _judge_val

    reference, _ = _kill_and_resume(
        tiny_critic_dir, sft_dataset, tmp_path, s3_env["bucket"], nproc=1, stage=2, tamper=True
    )
    # the uninterrupted run also exports a working critic
    assert reference.export_dir is not None and reference.checkpoints[-1].endswith(f"step-{STEPS}")
    _judge_val(reference.export_dir, sft_dataset, require_ok=False)


def test_zero2_two_processes_resume_exactly(
    tiny_critic_dir: Path, sft_dataset: Path, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    _kill_and_resume(tiny_critic_dir, sft_dataset, tmp_path, s3_env["bucket"], nproc=2, stage=2, kill=False)


def test_zero3_two_processes_resume_exactly_and_export_gathered_weights(
    tiny_critic_dir: Path, sft_dataset: Path, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    """ZeRO-3 partitions the weights across the 2 ranks: the export must hold the gathered, trained weights."""
    from safetensors.torch import load_file

    reference, resumed = _kill_and_resume(
        tiny_critic_dir, sft_dataset, tmp_path, s3_env["bucket"], nproc=2, stage=3, kill=False
    )
    for result in (reference, resumed):
        assert result.export_dir is not None and "val/parse_rate" in result.final_eval
    exported, base = (
        load_file(resumed.export_dir / "model.safetensors"),
        load_file(tiny_critic_dir / "model.safetensors"),
    )
    assert set(exported) == set(base)
    assert all(exported[k].shape == base[k].shape for k in base)  # full tensors, not ZeRO-3 shards
    assert sum(not (exported[k] == base[k]).all() for k in base) > len(base) // 2
    ref_export = load_file(reference.export_dir / "model.safetensors")
    assert all(
        (exported[k] - ref_export[k]).abs().max() <= 1e-5 * (1 + ref_export[k].abs().max()) for k in base
    )  # the resumed run ends where the uninterrupted one does


def test_state_codec_round_trips_plain_state_and_refuses_objects(tmp_path: Path) -> None:
    import json

    import torch

    from firm.critic.state_codec import StateCodecError, load_state, save_state

    flat = torch.arange(6, dtype=torch.float32)
    state = {
        "state": {
            0: {"step": torch.tensor(3.0), "exp_avg": flat[:4], "exp_avg_sq": flat[2:]}
        },  # shared storage
        "param_groups": [
            {"lr": 1e-3, "betas": (0.9, 0.999), "foreach": None, "params": [0], "nan": math.nan}
        ],
        "fp32": [torch.ones(2, dtype=torch.bfloat16)],
        "ds_version": "0.19.8",
        "overflow": False,
    }
    save_state(state, tmp_path / "s.safetensors")
    back = load_state(tmp_path / "s.safetensors")
    assert set(back) == set(state) and back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert math.isnan(back["param_groups"][0].pop("nan")) and list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["exp_avg_sq"], flat[2:]) and back["fp32"][0].dtype == torch.bfloat16

    class Scaler:
        pass

    for bad, where in ((Scaler(), "Scaler"), ({(1, 2): 0}, "dict key"), (signal.SIGKILL, "Signals")):
        with pytest.raises(StateCodecError, match=where):
            save_state({"x": bad}, tmp_path / "bad.safetensors")
    # a file whose tree names anything the codec did not write is refused, never turned into an object
    from safetensors.torch import save_file

    tree = {"$dict": [["x", {"$object": "os.system"}]]}
    save_file(
        {},
        str(tmp_path / "evil.safetensors"),
        metadata={"format": "firm-state-v1", "firm_state": json.dumps(tree)},
    )
    with pytest.raises(StateCodecError, match="unexpected node"):
        load_state(tmp_path / "evil.safetensors")


def test_cpu_deepspeed_starts_without_compiling_the_shm_op(tmp_path: Path) -> None:
    """FIRM's SFT starts DeepSpeed on CPU without JIT-compiling its shared-memory op (inference-only; training's
    all-reduce is gloo's): no compiler needed, no 25–60 s build on a fresh machine."""
    code = (
        "import torch\n"
        "from firm.critic.sft import DistEnv, init_distributed\n"
        "from firm.critic.sft_config import SFTConfig\n"
        "import deepspeed.comm.comm as c\n"
        "cfg = SFTConfig.model_construct(dist=type('D', (), {'strategy': 'deepspeed'})())\n"
        "env = DistEnv(rank=0, world=1, local_rank=0, backend='gloo', device=torch.device('cpu'))\n"
        "init_distributed(env, cfg)\n"
        "assert torch.distributed.is_initialized()\n"
        "print('shm op:', c.cdb.shm_comm_op)\n"
    )
    ext = tmp_path / "torch_extensions"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(TORCH_EXTENSIONS_DIR=str(ext)), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shm op: None" in proc.stdout and not list(ext.rglob("*shm_comm*"))
