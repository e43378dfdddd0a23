"""SFT configs: shipped recipes parse, overrides, clear errors for unknown keys and bad world sizes; launcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from firm.critic.sft_config import SFTConfig, load_sft_config
from firm.errors import ConfigError
from firm.recipes import list_recipes, recipe_path

PAPER = {
    "qwen3vl_8b_edit_full": (10, 2, 160),
    "qwen3vl_8b_gen_full": (5, 2, 80),
}


def test_every_shipped_recipe_parses_and_says_how_to_run_it() -> None:
    recipes = list_recipes()
    names = {r.name for r in recipes}
    assert {"critic/tiny_cpu", "critic/qwen3vl_8b_edit_full", "critic/qwen3vl_8b_gen_full"} <= names
    assert "critic/qwen3vl_8b_edit_lora" in names
    for r in recipes:
        data = yaml.safe_load(r.path.read_text())
        assert isinstance(data, dict), r.name
        header = r.path.read_text().split("\n\n", 1)[0]
        assert r.description, f"{r.name}: no header comment"
        if r.kind == "critic":
            cfg = load_sft_config(r.name)
            assert "firmctl critic train" in header and "torchrun" in header, r.name
            assert cfg.run_name


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_match_the_paper(name: str) -> None:
    cfg = load_sft_config(f"critic/{name}")
    per_device, accum, global_batch = PAPER[name]
    assert (cfg.batch.per_device, cfg.batch.grad_accum, cfg.batch.global_size) == (
        per_device,
        accum,
        global_batch,
    )
    assert cfg.global_batch(8) == global_batch
    assert cfg.finetune == "full" and cfg.precision == "bf16" and cfg.seed == 42 and cfg.epochs == 1
    o = cfg.optim
    assert (o.lr, o.betas, o.eps, o.scheduler, o.warmup_ratio) == (1e-5, (0.9, 0.999), 1e-8, "cosine", 0.1)
    assert cfg.model.path == "Qwen/Qwen3-VL-8B-Instruct"
    with pytest.raises(ConfigError, match=r"world size \(4\)"):
        cfg.global_batch(4)


def test_lora_recipe_targets_the_language_model() -> None:
    cfg = load_sft_config("qwen3vl_8b_edit_lora")  # a unique bare name works too
    assert cfg.finetune == "lora" and "q_proj" in cfg.lora.target_modules and cfg.lora.merge_on_export


def test_overrides_are_typed_and_unknown_keys_are_errors() -> None:
    cfg = load_sft_config(
        "critic/tiny_cpu",
        [
            "optim.lr=3e-4",
            "batch.per_device=2",
            "lora.target_modules=[q_proj, v_proj]",
            "max_steps=7",
            "finetune=lora",
        ],
    )
    assert cfg.optim.lr == 3e-4 and cfg.batch.per_device == 2 and cfg.max_steps == 7
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrate'.*known: betas, eps, lr"):
        load_sft_config("critic/tiny_cpu", ["optim.lrate=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'"):
        load_sft_config("critic/tiny_cpu", ["nope=1"])
    with pytest.raises(ConfigError, match="not a section"):
        load_sft_config("critic/tiny_cpu", ["seed.x=1"])
    with pytest.raises(ConfigError, match=r"invalid config at batch\.per_device"):
        load_sft_config("critic/tiny_cpu", ["batch.per_device=0"])
    with pytest.raises(ConfigError, match="no config file or shipped recipe"):
        load_sft_config("critic/does_not_exist")


def test_unknown_key_in_a_yaml_file(tmp_path: Path) -> None:
    data = yaml.safe_load(recipe_path("critic/tiny_cpu").read_text())
    data["optim"]["learning_rate"] = 1.0
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.learning_rate'"):
        load_sft_config(path)


def test_world_size_must_divide_the_global_batch() -> None:
    cfg = SFTConfig.model_validate(
        {
            "run_name": "x",
            "model": {"path": "m"},
            "data": {"dataset": "d"},
            "batch": {"per_device": 2, "global_size": 8},
        }
    )
    assert cfg.global_batch(4) == 8
    with pytest.raises(ConfigError, match=r"batch.global_size=8 .* world size \(3\) = 6"):
        cfg.global_batch(3)


def test_cli_rejects_bad_config_before_starting_processes(tmp_path: Path) -> None:
    firmctl = Path(sys.executable).parent / "firmctl"
    for args, msg in [
        (["--nproc", "3", "batch.global_size=16"], "batch.global_size=16"),
        (["optim.lrr=1"], "unknown config key 'optim.lrr'"),
    ]:
        proc = subprocess.run(
            [str(firmctl), "critic", "train", "--config", "critic/tiny_cpu", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], proc.stderr
    # a missing dataset under --nproc 2 is found before any worker starts: one line, no launcher summary, no
    # checkpoint published (an error found inside the workers: tests/sft/test_train.py, printed once as well)
    proc = subprocess.run(
        [str(firmctl), "critic", "train", "--config", "critic/tiny_cpu", "--nproc", "2",
         f"data.dataset={tmp_path / 'nope'}", f"checkpoint.uri={(tmp_path / 'ckpt').as_uri()}",
         f"output_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == f"error: data.dataset={tmp_path / 'nope'}: no such directory\n", proc.stderr
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "runs").exists()
    out = subprocess.run([str(firmctl), "recipes", "ls"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "critic/tiny_cpu" in out.stdout


def test_torchrun_command_line() -> None:
    from firm.launch.local import torchrun_command

    cmd = torchrun_command("firm.critic.sft", ["--config", "x"], 2, master_port=29555)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2" and cmd[cmd.index("--master_port") + 1] == "29555"
    assert cmd[-4:] == ["-m", "firm.critic.sft", "--config", "x"]
    from firm.launch.torchrun_quiet import main

    with pytest.raises(SystemExit):  # the quiet wrapper takes torchrun's own arguments
        main(["--help"])
    with pytest.raises(ConfigError):
        torchrun_command("m", [], 0)


def _header_commands(path: Path) -> list[list[str]]:
    """The training commands in a recipe's header comment, as argv lists (`firmctl critic train`, `python -m
    firm.critic.sft`, `torchrun ... -m firm.critic.sft`)."""
    import shlex

    out = []
    for line in path.read_text().split("\n\n", 1)[0].splitlines():
        text = line.lstrip("#").strip()
        if "firmctl critic train" in text or "-m firm.critic.sft" in text:
            out.append(shlex.split(text))
    return out


def test_every_header_command_is_a_valid_launch() -> None:
    """Each command written in a critic recipe's header parses with the real argument parsers, its overrides name
    real config keys, and its process count fits the recipe's global batch (what `firmctl critic train` checks
    before starting processes)."""
    from firm.critic.sft import parse_args

    checked = 0
    for r in list_recipes("critic"):
        commands = _header_commands(r.path)
        assert len(commands) >= 2, r.name
        for argv in commands:
            if argv[:3] == ["firmctl", "critic", "train"]:
                args, nproc, extra = argv[3:], 1, []
                while args:
                    a = args.pop(0)
                    if a == "--nproc":
                        nproc = int(args.pop(0))
                    elif a == "--resume":
                        extra.append(f"resume={args.pop(0)}")
                    else:
                        extra.append(a)
                config, overrides = parse_args(extra)
            else:
                m = argv.index("-m")
                assert argv[m + 1] == "firm.critic.sft", argv
                nproc = int(argv[argv.index("--nproc_per_node") + 1]) if argv[0] == "torchrun" else 1
                config, overrides = parse_args(argv[m + 2 :])
            cfg = load_sft_config(config, overrides)
            assert cfg.global_batch(nproc) >= nproc, argv
            checked += 1
    assert checked >= 8


def test_a_fresh_run_into_an_existing_run_is_refused(tmp_path: Path) -> None:
    """Two fresh runs with one run name would append to one metrics file and prune each other's checkpoints."""
    from firm.critic.sft import train
    from firm.critic.sft_config import check_fresh_run
    from firm.storage import publish_dir

    cfg = load_sft_config("critic/tiny_cpu", [f"data.dataset={tmp_path / 'no-data'}", "run_name=twice"])
    check_fresh_run(cfg)  # nothing there yet
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text("{}")
    publish_dir(ckpt, f"{cfg.checkpoint_root()}/step-10")
    with pytest.raises(
        ConfigError,
        match=r"run twice: checkpoints .*twice: already exists and is not empty; pass --overwrite",
    ):
        check_fresh_run(cfg)
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        train(cfg)  # refused before the (missing) dataset is even opened
    resumed = load_sft_config(
        "critic/tiny_cpu", [f"data.dataset={tmp_path / 'no-data'}", "run_name=twice", "resume=auto"]
    )
    check_fresh_run(resumed)  # continuing the run is fine


def test_memory_knobs_reach_deepspeed_and_are_checked() -> None:
    import torch

    from firm.critic.sft import DistEnv, _deepspeed_config

    cfg = load_sft_config(
        "critic/qwen3vl_8b_edit_full", ["dist.offload_optimizer=true", "dist.offload_param=true"]
    )
    assert cfg.model.gradient_checkpointing and cfg.data.max_seq_len and cfg.model.max_pixels
    env = DistEnv(rank=0, world=8, local_rank=0, backend="nccl", device=torch.device("cpu"))
    zero = _deepspeed_config(cfg, env, bf16=True)["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["offload_param"]["device"] == "cpu"
    with pytest.raises(ConfigError, match=r"dist\.offload_param needs"):
        load_sft_config("critic/qwen3vl_8b_edit_full", ["dist.offload_param=true", "dist.zero_stage=2"])
    with pytest.raises(ConfigError, match=r"dist\.offload_optimizer needs"):
        load_sft_config("critic/tiny_cpu", ["dist.offload_optimizer=true"])
