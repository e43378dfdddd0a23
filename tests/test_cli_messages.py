"""Error messages name what the user typed and the real cause; a failed start leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.cli.main import app


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert res.stdout == "" and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


def test_recipes_ls_unknown_kind_lists_the_kinds() -> None:
    err = _one_error(_run("recipes", "ls", "--kind", "foo"))
    assert "'foo'" in err and "critic" in err and "rl" in err


def test_serve_export_names_the_overwrite_flag(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "x").write_text("")
    err = _one_error(
        _run("serve", "export", "--critic", str(tmp_path), "--task", "edit", "--out", str(tmp_path / "repo"))
    )
    assert "--overwrite" in err


def test_bench_make_synthetic_says_why_out_cannot_be_created(tmp_path: Path) -> None:
    err = _one_error(_run("bench", "make-synthetic", "--out", "/proc/nope", "--n", "2"))
    assert "--out /proc/nope: cannot create a directory in /proc" in err and "no such file" not in err
    (tmp_path / "f").write_text("")
    err = _one_error(_run("bench", "make-synthetic", "--out", str(tmp_path / "f" / "bench"), "--n", "2"))
    assert f"{tmp_path / 'f'} is a file, not a directory" in err


def test_bench_run_against_an_unreachable_reward_service(tmp_path: Path) -> None:
    """The error asks whether the service is running there, and the failed start leaves no output behind."""
    from firm.processes import free_port

    assert _run("bench", "make-synthetic", "--out", str(tmp_path / "bench"), "--n", "1").exit_code == 0
    port = free_port()
    out = tmp_path / "runs" / "bench-out"
    err = _one_error(
        _run("bench", "run", "--critic", f"triton://127.0.0.1:{port}", "--bench", str(tmp_path / "bench"),
             "--out", str(out))
    )  # fmt: skip
    assert f"is the reward service running at 127.0.0.1:{port}?" in err
    assert not (tmp_path / "runs").exists()  # no predictions.jsonl, no empty run directory


def test_bench_run_failure_keeps_an_existing_out_dir_and_its_predictions(tmp_path: Path) -> None:
    from firm.processes import free_port

    assert _run("bench", "make-synthetic", "--out", str(tmp_path / "bench"), "--n", "1").exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_error(
        _run("bench", "run", "--critic", f"triton://127.0.0.1:{free_port()}", "--bench",
             str(tmp_path / "bench"), "--out", str(out))
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("kind", ["critic", "rl"])
def test_invalid_override_is_blamed_not_the_recipe(kind: str) -> None:
    if kind == "critic":
        from firm.critic.sft_config import load_sft_config as load

        name, bad = "critic/tiny_cpu", "batch.per_device=0"
    else:
        from firm.rl.config import load_config as load
        from firm.rl.train import config_path

        name, bad = str(config_path("rl/tiny_sd3_nft")), "sampling.group_size=1"
    from firm.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        load(name, [bad])
    msg = str(exc.value)
    assert msg.startswith(f"override '{bad}': "), msg
    assert ".yaml" not in msg


def test_invalid_value_in_the_recipe_still_names_the_file(tmp_path: Path) -> None:
    import yaml

    from firm.errors import ConfigError
    from firm.rl.config import load_config
    from firm.rl.train import config_path

    data = yaml.safe_load(config_path("rl/tiny_sd3_nft").read_text())
    data["sampling"]["group_size"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"bad\.yaml: sampling\.group_size"):
        load_config(path, ["steps=3"])
