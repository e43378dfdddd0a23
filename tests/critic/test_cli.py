"""`firmctl models tiny-critic` and `firmctl critic score` end to end with the tiny critics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.cli.main import app
from firm.models.images import edit_pair, shapes_image

runner = CliRunner()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pics")
    src, dst, _ = edit_pair("blue", "red")
    paths = {"src": d / "a.png", "dst": d / "b.png", "gen": d / "g.png", "txt": d / "notes.txt"}
    src.save(paths["src"])
    dst.save(paths["dst"])
    shapes_image([("circle", "green")] * 2).save(paths["gen"])
    paths["txt"].write_text("not a picture")
    paths["zero"] = d / "zero.png"
    paths["zero"].write_bytes(b"")
    paths["dir"] = d
    return paths


def _run(*args: str) -> tuple[int, dict | None, str]:
    res = runner.invoke(app, list(args))
    try:
        out = json.loads(res.stdout)
    except json.JSONDecodeError:
        out = None
    return res.exit_code, out, res.stderr


def test_models_tiny_critic_writes_a_loadable_critic(tmp_path: Path) -> None:
    out = tmp_path / "critic"
    code, data, _ = _run("models", "tiny-critic", "--out", str(out))
    assert code == 0 and data == {"path": str(out.resolve()), "size": "tiny", "format_steps": 0}
    from firm.critic import Critic

    critic = Critic.from_pretrained(out, max_new_tokens=2)
    assert critic.model.config.text_config.hidden_size == 64
    # refuses to overwrite, and rejects unknown sizes, with one line on stderr
    code, _, err = _run("models", "tiny-critic", "--out", str(out))
    assert code == 1 and err.strip() == f"error: --out {out}: directory is not empty"
    code, _, err = _run("models", "tiny-critic", "--out", str(tmp_path / "x"), "--size", "huge")
    assert code == 1 and "unknown --size 'huge'" in err and len(err.strip().splitlines()) == 1
    # an unwritable location names --out, not an internal temp path
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = _run("models", "tiny-critic", "--out", str(blocker / "critic"))
    assert code == 1 and err.strip().startswith(f"error: --out {blocker / 'critic'}: cannot write there")
    assert len(err.strip().splitlines()) == 1 and ".critic." not in err


def test_score_edit_both_readouts(formatted_critic_dir: Path, pictures: dict[str, Path]) -> None:
    base = [
        "critic",
        "score",
        "--model",
        str(formatted_critic_dir),
        "--task",
        "edit",
        "--source",
        str(pictures["src"]),
        "--edited",
        str(pictures["dst"]),
        "--instruction",
        "Make the red square blue.",
        "--max-new-tokens",
        "48",
    ]
    code, data, err = _run(*base)
    assert code == 0, err
    execution, consistency = data["judgements"]
    assert (execution["axis"], consistency["axis"]) == ("execution", "consistency")
    assert execution["status"] == "ok" and isinstance(execution["score"], int)
    reward = data["reward"]
    e01, c01 = (execution["score"] - 1) / 4, (consistency["score"] - 1) / 4
    assert reward["formulation"] == "cme" and reward["reward"] == pytest.approx(e01 * (0.6 + 0.4 * c01))

    code, data, err = _run(*base, "--readout", "expected")
    assert code == 0, err
    exp = [j["expected_score"] for j in data["judgements"]]
    assert all(1.0 <= v <= 5.0 for v in exp)
    assert data["reward"]["execution"] == pytest.approx((exp[0] - 1) / 4)


def test_score_gen_with_quality_and_untrained_critic(
    formatted_critic_dir: Path, tiny_critic_dir: Path, pictures: dict[str, Path]
) -> None:
    code, data, err = _run(
        "critic",
        "score",
        "--model",
        str(formatted_critic_dir),
        "--task",
        "gen",
        "--image",
        str(pictures["gen"]),
        "--prompt",
        "two green circles",
        "--quality",
        "--max-new-tokens",
        "48",
    )
    assert code == 0, err
    assert [j["axis"] for j in data["judgements"]] == ["instruction", "quality"]
    assert data["reward"]["formulation"] == "qma" and 0.0 <= data["reward"]["reward"] <= 1.0
    # the untrained critic's answers do not parse: the reward is skipped (null), never a silent 0
    code, data, err = _run(
        "critic",
        "score",
        "--model",
        str(tiny_critic_dir),
        "--task",
        "gen",
        "--image",
        str(pictures["gen"]),
        "--prompt",
        "two green circles",
        "--max-new-tokens",
        "8",
    )
    assert code == 0, err
    [judgement] = data["judgements"]
    assert judgement["status"] != "ok" and judgement["score"] is None
    assert data["reward"]["reward"] is None and data["reward"]["status"].startswith(judgement["status"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "edit", "--source", "{src}"], "--task edit needs --edited, --instruction"),
        (
            ["--task", "gen", "--image", "{gen}", "--prompt", "p", "--source", "{src}"],
            "--source cannot be used with --task gen",
        ),
        (
            ["--task", "gen", "--image", "{txt}", "--prompt", "p"],
            "image of sample cli ({txt}): not an image file",
        ),
        (
            ["--task", "gen", "--image", "{gen}", "--prompt", "  "],
            "gen/instruction (sample cli): prompt must not",
        ),
        (
            ["--task", "gen", "--image", "{gen}/missing.png", "--prompt", "p"],
            "--image {gen}/missing.png: no such",
        ),
        (["--task", "gen", "--image", "{zero}", "--prompt", "p"], "image of sample cli ({zero}): empty file"),
        (["--task", "gen", "--image", "{dir}", "--prompt", "p"], "--image {dir}: is a directory"),
        (["--task", "paint", "--image", "{gen}"], "unknown --task 'paint'"),
        (["--task", "gen", "--image", "{gen}", "--prompt", "p", "--readout", "logits"], "unknown --readout"),
        (["--task", "gen", "--image", "{gen}", "--prompt", "p", "--device", "gpu0"], "unknown device 'gpu0'"),
    ],
    ids=[
        "missing",
        "mixed",
        "not-image",
        "empty-prompt",
        "missing-file",
        "zero-size",
        "directory",
        "task",
        "readout",
        "device",
    ],
)
def test_score_bad_input_one_line_error(
    tiny_critic_dir: Path, pictures: dict[str, Path], extra: list[str], message: str
) -> None:
    fmt = {k: str(v) for k, v in pictures.items()}
    args = [a.format(**fmt) for a in extra]
    code, _, err = _run("critic", "score", "--model", str(tiny_critic_dir), "--max-new-tokens", "2", *args)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message.format(**fmt) in err


def test_firmctl_entry_point_subprocess(tiny_critic_dir: Path, pictures: dict[str, Path]) -> None:
    """The installed `firmctl` script itself (not just the Typer app) scores an edit."""
    exe = Path(sys.executable).with_name("firmctl")
    cmd = [
        str(exe),
        "critic",
        "score",
        "--model",
        str(tiny_critic_dir),
        "--task",
        "edit",
        "--source",
        str(pictures["src"]),
        "--edited",
        str(pictures["dst"]),
        "--instruction",
        "Make it blue.",
        "--readout",
        "expected",
        "--max-new-tokens",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # stdout is exactly one JSON document (library chatter goes to stderr)
    assert len(data["judgements"]) == 2 and all(1 <= j["expected_score"] <= 5 for j in data["judgements"])


def test_missing_model_is_one_line(pictures: dict[str, Path]) -> None:
    code, _, err = _run(
        "critic",
        "score",
        "--model",
        "/no/such/critic",
        "--task",
        "gen",
        "--image",
        str(pictures["gen"]),
        "--prompt",
        "p",
    )
    assert code == 1 and err.strip() == "error: critic model '/no/such/critic': no such directory"
