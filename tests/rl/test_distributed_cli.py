"""`firmctl rl train --nproc 2` (torchrun, gloo, data parallel over prompts) and `firmctl rl sample`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

from tests._threads_after_main import assert_no_backend_threads, recorded_threads, recording_env


def _firmctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "firm.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_two_process_torchrun_run(tiny_cfg, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=2, reward__async_overlap=True)))
    threads = tmp_path / "threads"  # each rank's threads at exit (tests/_threads_after_main.py)
    scratch = tmp_path / "scratch"  # the run's temporary directory
    scratch.mkdir()
    res = _firmctl(
        "rl", "train", "--config", str(config), "--nproc", "2", "sampling.prompts_per_step=4",
        env={**recording_env(threads), "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    # torchrun left no `torchelastic_*` log tree in the temporary directory (torchrun_quiet.no_log_files)
    assert not list(scratch.glob("torchelastic_*")), sorted(p.name for p in scratch.iterdir())
    # the run ended its process group, gloo's backend threads included, before the ranks exited: diffusers' and
    # transformers' imports came after `init_process_group`, and the trainer held the group until its frame was
    # gone (firm.processes; the critic SFT's 2-process test checks the same)
    assert_no_backend_threads(recorded_threads(threads), 2)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert summary["rank_divergence"] == 0.0  # averaged gradients kept both ranks' LoRA identical
    assert summary["last"]["reward/n"] == 16  # 4 prompts × group 4, summed over both ranks
    out = Path(summary["output_uri"])
    assert (out / "final/lora/pytorch_lora_weights.safetensors").exists()
    steps = [json.loads(x)["step"] for x in (out / "run/metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]  # only rank 0 logs


def test_cli_train_piped_prints_json_on_stdout_and_progress_lines_on_stderr(
    tiny_cfg, tiny_sd3: Path, tmp_path: Path
) -> None:
    """Piped (as in a KFP step or a pod): stdout is exactly the JSON summary; stderr gets a progress line every
    FIRM_PROGRESS_INTERVAL seconds (step, rate, ETA) and none of the libraries' expected chatter."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=4)))
    # an interval well under a step's time, so lines come between steps on a fast machine too (the SFT CLI test in
    # tests/sft/test_train.py failed with 1 s: a run shorter than the interval prints no progress line at all)
    res = _firmctl("rl", "train", "--config", str(config), env={"FIRM_PROGRESS_INTERVAL": "0.05"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout)
    assert summary["steps"] == 4 and res.stdout.count("\n") == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("progress: rl nft test: step ")]
    assert len(lines) >= 3, res.stderr
    assert any("step/s, ETA" in ln for ln in lines), lines
    assert lines[-1].startswith("progress: rl nft test: step 4/4 (100%)") and "done in" in lines[-1], lines
    # the last line says what ran and where its outputs are
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("done: RL, 4 steps") and last.endswith(f"outputs in {summary['output_uri']}"), last
    for noise in (
        "Loading pipeline components",
        "Loading weights",
        "requires torchvision",
        "cannot be saved",
    ):
        assert noise not in res.stderr, res.stderr
    # sampling with the trained LoRA (transformer only): no "No LoRA keys associated to CLIPTextModel…" per encoder
    lora = Path(summary["output_uri"]) / "final/lora"
    res = _firmctl(
        "rl", "sample", "--policy", str(tiny_sd3), "--lora", str(lora), "--prompt", "a red apple",
        "--out", str(tmp_path / "samples"), "--steps", "2", "--resolution", "32", "--max-sequence-length", "16",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["images"]) == 1
    for noise in ("No LoRA keys", "Loading pipeline components", "Loading weights", "requires torchvision"):
        assert noise not in res.stderr, res.stderr


def _cli(*args: str):
    from typer.testing import CliRunner

    from firm.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_prompts_not_divisible_by_ranks_is_a_config_error(tiny_cfg, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=1)))
    res = _cli("rl", "train", "--config", str(config), "--nproc", "2", "sampling.prompts_per_step=3")
    assert res.exit_code == 1
    assert "error: sampling.prompts_per_step=3 is not divisible by 2 ranks" in res.output


def test_cli_train_then_sample_with_lora(tiny_cfg, tiny_sd3: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=1)))
    res = _cli("rl", "train", "--config", str(config), "sampling.group_size=1")
    assert res.exit_code == 1 and "error: " in res.output and "group_size" in res.output
    res = _cli("rl", "train", "--config", str(config))
    assert res.exit_code == 0, res.output[-3000:]
    lora = Path(json.loads(res.stdout.strip().splitlines()[-1])["output_uri"]) / "final/lora"
    outs = {}
    for name, extra in (("base", []), ("lora", ["--lora", str(lora)])):
        r = _cli(
            "rl",
            "sample",
            "--policy",
            str(tiny_sd3),
            "--prompt",
            "a red apple",
            "--out",
            str(tmp_path / name),
            "--steps",
            "4",
            "--resolution",
            "32",
            "--max-sequence-length",
            "16",
            *extra,
        )
        assert r.exit_code == 0, r.output[-3000:]
        (path,) = json.loads(r.stdout.strip().splitlines()[-1])["images"]
        outs[name] = Image.open(path)
        assert outs[name].size == (32, 32)
    assert outs["base"].tobytes() != outs["lora"].tobytes()
    r = _cli(
        "rl", "sample", "--policy", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "o")
    )
    assert r.exit_code == 1 and "error: --policy=" in r.output  # the option the user typed
    r = _cli(
        "rl",
        "sample",
        "--policy",
        str(tiny_sd3),
        "--lora",
        "/nope",
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.exit_code == 1 and r.stderr.startswith("error: --lora=/nope: "), r.output
    assert not (tmp_path / "o").exists()  # a failed start leaves nothing behind


def test_cli_checks_before_starting_processes(tiny_cfg, tmp_path: Path) -> None:
    """`--nproc 2` with a mistake every rank would hit: one `error:` line naming it, before any process starts."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=1)))
    cases = {
        f"data.prompts={tmp_path / 'nope.txt'}": "nope.txt",
        f"policy.uri={tmp_path / 'no-policy'}": "policy.uri=",
        "output_uri=s3://firm-checkpoints/x": "missing S3 credentials",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRM_S3_")}
    for override, reason in cases.items():
        res = subprocess.run(
            [sys.executable, "-m", "firm.cli.main", "rl", "train", "--config", str(config), "--nproc", "2", override],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert res.returncode == 1 and res.stdout == "", (override, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), (override, res.stderr)
        assert reason in res.stderr, (override, res.stderr)


def test_the_launchers_checks_load_no_torch(tiny_cfg, tmp_path: Path) -> None:
    """`firmctl rl train --nproc N` checks the run in the launching process (config, credentials, policy location,
    prompt file, reward), which then only starts torchrun and waits: neither needs torch, so the checks load none of
    the libraries each rank loads anyway (~2 s a process before; a mistake is now reported in well under a second).
    The same for the pipeline's launcher step, which also renders the run's curves (`firm.rl.report`)."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_cfg(as_dict=True, steps=1)))
    code = (
        "import sys\n"
        "import firm.cli.main, firm.cli.rl_cmd, firm.launch.local  # the command, and what starts torchrun\n"
        "from firm.rl.config import load_config\n"
        "from firm.rl.train import preflight\n"
        "import firm.rl.alarms, firm.rl.report  # what pipelines/components/launch.py's rl_train step uses\n"
        "preflight(load_config(sys.argv[1], []), 2)\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", res.stdout
