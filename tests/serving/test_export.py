"""Model repository export: config.pbtxt contents, weights, the vLLM variant (structural), bad input. No server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from firm.errors import InputError
from firm.rewards.packs import load_pack, save_pack
from firm.serving.export import BatchingConfig, ExportConfig, export_repository
from firm.serving.spec import ENGINE, SPECS


def _params(text: str) -> dict[str, str]:
    return dict(re.findall(r'key: "([^"]+)"\s*value: \{ string_value: "([^"]*)" \}', text))


def test_python_export_writes_three_batched_models(tmp_path: Path, tiny_critic_dir: Path) -> None:
    cfg = ExportConfig(
        critic=str(tiny_critic_dir),
        task="all",
        device="gpu",
        instances=2,
        readout="expected",
        edit_formulation="guard",
        edit_w_base=0.5,
        edit_w_bonus=0.5,
        edit_guard_threshold=3,
        batching=BatchingConfig(max_batch_size=24, preferred_batch_sizes=[6, 12], max_queue_delay_us=1500),
    )
    repo = Path(export_repository(cfg, tmp_path / "repo"))
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == [
        "firm_critic",
        "firm_edit_reward",
        "firm_engine",
        "firm_gen_reward",
    ]
    # the engine: the one python model, holding the weights and the pack; every public tensor, optional inputs
    text = (repo / "firm_engine" / "config.pbtxt").read_text()
    assert 'backend: "python"' in text and "max_batch_size: 48" in text
    assert "preferred_batch_size: [ 6, 12 ]" in text and "max_queue_delay_microseconds: 1500" in text
    assert "count: 2" in text and "kind: KIND_GPU" in text
    assert text.count("optional: true") == len(ENGINE.inputs) == 8
    assert (
        'name: "instruction_score"' in text
    )  # firm_gen_reward's score, apart from firm_edit_reward's text input
    assert (repo / "firm_engine" / "1" / "model.py").read_text().count("TritonPythonModel") == 1
    p = _params(text)
    assert p["critic"] == "firm_engine/1/critic" and p["readout"] == "expected" and p["device"] == "gpu"
    assert p["rubrics"] == "firm_engine/1/rubrics.yaml"
    assert (p["rubrics_name"], p["rubrics_sha256"]) == ("firm-v1", load_pack().sha256)
    assert (p["max_new_tokens"], p["max_pixels"]) == ("0", "0")  # the pack's budgets and bounds
    assert (p["w_base"], p["gen_w_base"]) == ("0.5", "0.4")  # edit and gen weights apart
    assert load_pack(repo / "firm_engine" / "1" / "rubrics.yaml") == load_pack()
    # the public models: ensembles with the public tensors, routed to the engine, naming the pack
    for name, spec in SPECS.items():
        text = (repo / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in text and 'platform: "ensemble"' in text and "backend:" not in text
        mbs = int(re.search(r"max_batch_size: (\d+)", text).group(1))
        assert mbs == (48 if name == "firm_critic" else 24)
        for t in (*spec.inputs, *spec.outputs):
            assert re.search(rf'name: "{t.name}"\s*data_type: {t.config_dtype}', text), (name, t.name)
        assert 'model_name: "firm_engine"' in text and not (repo / name / "1" / "model.py").exists()
        assert _params(text)["rubrics_sha256"] == load_pack().sha256
    assert (
        'output_map { key: "instruction_score" value: "instruction" }'
        in (repo / "firm_gen_reward" / "config.pbtxt").read_text()
    )
    engine = _params((repo / "firm_engine" / "config.pbtxt").read_text())
    assert (engine["formulation"], engine["w_base"], engine["w_bonus"], engine["guard_threshold"]) == (
        "guard",
        "0.5",
        "0.5",
        "3.0",
    )
    assert (engine["gen_w_base"], engine["gen_w_bonus"], engine["quality"]) == ("0.4", "0.6", "true")
    weights = repo / "firm_engine" / "1" / "critic"
    assert (weights / "config.json").read_bytes() == (tiny_critic_dir / "config.json").read_bytes()
    assert json.loads((repo / "firm_export.json").read_text())["task"] == "all"


def test_no_dynamic_batching_single_task_and_another_pack(tmp_path: Path, tiny_critic_dir: Path) -> None:
    other = load_pack().model_copy(update={"name": "other"})
    pack_file = Path(save_pack(other, tmp_path / "other.yaml"))
    cfg = ExportConfig(
        critic=str(tiny_critic_dir),
        task="edit",
        weights="reference",
        rubrics=str(pack_file),
        max_new_tokens=77,
        batching=BatchingConfig(enabled=False),
    )
    repo = Path(export_repository(cfg, tmp_path / "repo"))
    # firm_critic is always there, and the engine behind both
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == [
        "firm_critic",
        "firm_edit_reward",
        "firm_engine",
    ]
    text = (repo / "firm_engine" / "config.pbtxt").read_text()
    assert "dynamic_batching" not in text and "kind: KIND_CPU" in text
    p = _params(text)
    assert p["critic"] == str(tiny_critic_dir.resolve())  # referenced, not copied
    assert (p["rubrics_name"], p["rubrics_sha256"], p["max_new_tokens"]) == ("other", other.sha256, "77")
    assert (
        load_pack(repo / p["rubrics"]).sha256 == other.sha256
    )  # self-contained: no need for the source file
    assert not (repo / "firm_engine" / "1" / "critic").exists()
    # firm_critic alone
    only = Path(export_repository(ExportConfig(critic=str(tiny_critic_dir), task="critic"), tmp_path / "c"))
    assert sorted(p.name for p in only.iterdir() if p.is_dir()) == ["firm_critic", "firm_engine"]


def test_vllm_variant_is_structurally_valid(tmp_path: Path, tiny_critic_dir: Path) -> None:
    cfg = ExportConfig(
        critic=str(tiny_critic_dir),
        task="all",
        engine="vllm",
        device="gpu",
        vllm_engine_args={"tensor_parallel_size": 2},
    )
    repo = Path(export_repository(cfg, tmp_path / "repo"))
    critic_cfg = (repo / "firm_critic" / "config.pbtxt").read_text()
    assert 'backend: "vllm"' in critic_cfg and "max_batch_size: 0" in critic_cfg
    assert "decoupled: true" in critic_cfg and "kind: KIND_MODEL" in critic_cfg
    assert "input [" not in critic_cfg  # the vLLM backend declares text_input/image/... itself
    engine = json.loads((repo / "firm_critic" / "1" / "model.json").read_text())
    assert engine["model"] == "/models/firm_critic/1/critic" and engine["tensor_parallel_size"] == 2
    assert engine["limit_mm_per_prompt"] == {"image": 2} and engine["dtype"] == "bfloat16"
    # vLLM's processor pass keeps the images the reward models fitted: its size spans every rubric's bounds (firm-v1:
    # one 28×28 cell, no enlarging, up to the tiny processor's 112×112), never its own default minimum
    assert engine["mm_processor_kwargs"] == {"size": {"shortest_edge": 28 * 28, "longest_edge": 112 * 112}}
    # room for the prompt and the pack's longest answer (firm-v1: 1024 tokens for gen/instruction)
    assert engine["max_model_len"] == 8192 + max(r.generation.max_new_tokens for r in load_pack().rubrics)
    assert (repo / "firm_critic" / "1" / "critic" / "config.json").exists()
    assert not (repo / "firm_critic" / "1" / "model.py").exists()
    for name in ("firm_edit_reward", "firm_gen_reward"):
        text = (repo / name / "config.pbtxt").read_text()
        assert 'backend: "python"' in text and int(re.search(r"max_batch_size: (\d+)", text).group(1)) > 0
        assert _params(text)["engine"] == "vllm" and "kind: KIND_CPU" in text
    with pytest.raises(ValidationError, match="text"):
        ExportConfig(critic=str(tiny_critic_dir), task="edit", engine="vllm", readout="expected")


def test_vllm_prompt_matches_in_process_layout(tiny_critic_dir: Path) -> None:
    """What the vLLM critic would receive is the in-process critic's own prompt and image count."""
    from firm.critic.critic import Critic, CriticRequest
    from firm.models.images import edit_pair
    from firm.serving.backend.vllm_critic import render_request

    critic = Critic.from_pretrained(tiny_critic_dir, max_pixels=64 * 64)
    src, dst, ins = edit_pair()
    req = CriticRequest(task="edit", axis="execution", images=[src, dst], instruction=ins)
    prompt, images = render_request(critic.processor, req, 64 * 64)
    _, expected_prompt, _ = critic._prepare(req, 0)
    assert prompt == expected_prompt and len(images) == 2 and ins in prompt


def test_export_bad_input(tmp_path: Path, tiny_critic_dir: Path) -> None:
    with pytest.raises(InputError, match="no such directory"):
        export_repository(ExportConfig(critic=str(tmp_path / "nope"), task="edit"), tmp_path / "r1")
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "x").write_text("keep")
    with pytest.raises(InputError, match="not empty"):
        export_repository(ExportConfig(critic=str(tiny_critic_dir), task="edit"), tmp_path / "r2")
    assert (tmp_path / "r2" / "x").read_text() == "keep"
    with pytest.raises(ValidationError, match="preferred_batch_sizes"):
        BatchingConfig(max_batch_size=8, preferred_batch_sizes=[16])
    with pytest.raises(ValidationError):
        ExportConfig(critic=str(tiny_critic_dir), task="video")
    with pytest.raises(InputError, match="rubric pack 'nope' not found"):
        export_repository(
            ExportConfig(critic=str(tiny_critic_dir), task="edit", rubrics="nope"), tmp_path / "r3"
        )
    assert not (tmp_path / "r3").exists()


def test_serve_export_cli(tmp_path: Path, tiny_critic_dir: Path) -> None:
    from typer.testing import CliRunner

    from firm.cli.main import app

    out = tmp_path / "repo"
    args = [
        "serve",
        "export",
        "--critic",
        str(tiny_critic_dir),
        "--task",
        "gen",
        "--out",
        str(out),
        "--max-batch-size",
        "4",
        "--preferred-batch-size",
        "2,4",
        "--max-queue-delay-us",
        "700",
        "--no-gen-quality",
        "--instances",
        "3",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {
        "repository": str(out.resolve()),
        "task": "gen",
        "engine": "python",
        "rubrics": load_pack().ref,
    }
    text = (out / "firm_engine" / "config.pbtxt").read_text()
    assert "preferred_batch_size: [ 2, 4 ]" in text and "max_queue_delay_microseconds: 700" in text
    assert "count: 3" in text and _params(text)["quality"] == "false"
    assert "max_batch_size: 4" in (out / "firm_gen_reward" / "config.pbtxt").read_text()
    bad = [
        "serve",
        "export",
        "--critic",
        str(tiny_critic_dir),
        "--task",
        "gen",
        "--out",
        str(tmp_path / "r2"),
        "--max-batch-size",
        "4",
        "--preferred-batch-size",
        "8",
    ]
    r = CliRunner().invoke(app, bad)
    assert r.exit_code == 1 and r.stderr.startswith("error:") and "preferred_batch_sizes" in r.stderr


def test_cli_vllm_export_for_the_helm_chart_mount(tmp_path: Path, tiny_critic_dir: Path) -> None:
    """The chart mounts the fetched repository at /models/repo: `--vllm-models-root` points model.json there."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "firm.cli.main", "serve", "export", "--critic", str(tiny_critic_dir), "--task", "edit",
         "--engine", "vllm", "--device", "gpu", "--out", str(tmp_path / "repo"), "--vllm-models-root", "/models/repo"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    engine = json.loads((tmp_path / "repo" / "firm_critic" / "1" / "model.json").read_text())
    assert engine["model"] == "/models/repo/firm_critic/1/critic"


def test_vllm_confidence_from_top_k_logprobs() -> None:
    """The vLLM engine's confidence: the greedy tokens' decoded text locates the score digit, whose top-k
    logprobs give the digit distribution (digits outside the top k count as 0); no match → no confidence."""
    import math

    from firm.serving.backend.vllm_critic import digit_dists_from_logprobs

    digit_ids = [16, 17, 18, 19, 20]

    def step(chosen: int, piece: str, others: dict[int, float] | None = None) -> dict[str, dict]:
        d = {str(chosen): {"logprob": math.log(0.7), "rank": 1, "decoded_token": piece}}
        for tid, p in (others or {}).items():
            d[str(tid)] = {"logprob": math.log(p), "rank": 2, "decoded_token": "?"}
        return d

    text = '{"score": [4]}'
    steps = [step(1, '{"score": ['), step(19, "4", {18: 0.2, 500: 0.1}), step(2, "]}")]
    (probs,) = digit_dists_from_logprobs(steps, text, [(11, 12)], digit_ids)  # type: ignore[misc]
    assert probs == pytest.approx([0, 0, 0.2 / 0.9, 0.7 / 0.9, 0])
    assert digit_dists_from_logprobs(steps, text, [(10, 12)], digit_ids) is None  # not one character
    merged = [step(1, '{"score": [4'), step(2, "]}")]
    assert digit_dists_from_logprobs(merged, text, [(11, 12)], digit_ids) is None
