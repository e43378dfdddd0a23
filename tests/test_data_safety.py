"""Nothing lost (issue 30): every command that writes a dataset, checkpoint prefix, export or publication refuses an
existing, non-empty target with the one shared message (`firm.storage.targets`) and leaves it byte-for-byte as it
was. Every refusal comes before any expensive work (no model, teacher, process or network), so these stay fast."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firm.cli.main import app
from firm.storage.targets import TARGET_EXISTS

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _target(tmp: Path) -> Path:
    t = tmp / "target"
    (t / "sub").mkdir(parents=True)
    (t / "precious.txt").write_bytes(b"the user's own data\n")
    (t / "sub" / "MANIFEST.json").write_bytes(b"{}")
    return t


def _src_dir(tmp: Path) -> Path:
    s = tmp / "src"
    s.mkdir()
    (s / "new.txt").write_bytes(b"new\n")
    return s


def _critic_train(tmp: Path, t: Path) -> list[str]:
    data = tmp / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    model = tmp / "model"
    model.mkdir()
    return ["critic", "train", "--config", "critic/tiny_cpu", f"data.dataset={data}", f"model.path={model}",
            f"checkpoint.uri={t.as_uri()}", f"output_dir={tmp / 'runs'}"]  # fmt: skip


def _rl_train(tmp: Path, t: Path) -> list[str]:
    return ["rl", "train", "--config", "rl/tiny_qwen_edit_nft", f"output_uri={t}"]


def _job_submit(tmp: Path, t: Path) -> list[str]:
    spec = REPO / "k8s" / "jobs" / "critic-sft-tiny-cpu.yaml"
    return ["job", "submit", "--config", str(spec), "--backend", "local", f"checkpoint_uri={t.as_uri()}"]


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "data curate-edit": lambda tmp, t: [
        "data",
        "curate-edit",
        "--input",
        str(tmp / "m.jsonl"),
        "--out",
        str(t),
        "--teacher",
        "http://127.0.0.1:9",
    ],
    "data curate-gen": lambda tmp, t: [
        "data",
        "curate-gen",
        "--input",
        str(tmp / "m.jsonl"),
        "--out",
        t.as_uri(),
        "--planner",
        "http://127.0.0.1:9",
        "--scorer",
        "http://127.0.0.1:9",
    ],
    "data import-firm-edit": lambda tmp, t: [
        "data",
        "import-firm-edit",
        str(tmp / "release"),
        "--out",
        str(t),
    ],
    "data import-firm-gen": lambda tmp, t: ["data", "import-firm-gen", str(tmp / "release"), "--out", str(t)],
    "critic train": _critic_train,
    "rl train": _rl_train,
    "bench run": lambda tmp, t: [
        "bench",
        "run",
        "--critic",
        "random://1",
        "--bench",
        str(tmp / "bench"),
        "--out",
        str(t),
    ],
    "serve export": lambda tmp, t: [
        "serve",
        "export",
        "--critic",
        str(tmp / "c"),
        "--task",
        "edit",
        "--out",
        str(t),
    ],
    "serve export (URI)": lambda tmp, t: [
        "serve",
        "export",
        "--critic",
        str(tmp / "c"),
        "--task",
        "edit",
        "--out",
        t.as_uri(),
    ],  # fmt: skip,
    "storage publish": lambda tmp, t: ["storage", "publish", str(_src_dir(tmp)), t.as_uri()],
    "storage fetch": lambda tmp, t: ["storage", "fetch", (tmp / "pub").as_uri(), str(t)],
    "storage cp": lambda tmp, t: ["storage", "cp", str(_src_dir(tmp)), t.as_uri()],
    "job submit": _job_submit,
    "quickstart": lambda tmp, t: ["quickstart", "--workdir", str(t)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_writing_command_refuses_an_existing_target(
    command: str, tmp_path: Path, firm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = _target(tmp_path)
    before = _tree(target)
    res = CliRunner().invoke(app, COMMANDS[command](tmp_path, target))
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert f"{TARGET_EXISTS}" in lines[0], lines[0]
    assert _tree(target) == before


# ------------------------------------------------------------------------------------------------ publications
def test_publish_refuses_an_existing_publication_and_overwrite_leaves_no_stale_file(
    tmp_path: Path, firm_home: Path
) -> None:
    from firm.storage import publish_dir, read_manifest

    uri = (tmp_path / "pub").as_uri()
    old = tmp_path / "old"
    old.mkdir()
    (old / "a.txt").write_text("a")
    (old / "stale.txt").write_text("only in the old one")
    publish_dir(old, uri)
    new = _src_dir(tmp_path)
    res = CliRunner().invoke(app, ["storage", "publish", str(new), uri])
    assert res.exit_code == 1 and TARGET_EXISTS in res.stderr
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == ["MANIFEST.json", "a.txt", "stale.txt"]
    res = CliRunner().invoke(app, ["storage", "publish", str(new), uri, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == ["MANIFEST.json", "new.txt"]
    # the library's re-publish (checkpoints) never leaves the old publication's files beside the new manifest
    publish_dir(old, uri)
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == ["MANIFEST.json", "a.txt", "stale.txt"]
    publish_dir(new, uri)
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == ["MANIFEST.json", "new.txt"]
    assert [f.path for f in read_manifest(uri).files] == ["new.txt"]


def test_fetch_never_merges_into_a_users_folder(tmp_path: Path, firm_home: Path) -> None:
    from firm.errors import InputError
    from firm.storage import fetch_dir, publish_dir

    uri = (tmp_path / "pub").as_uri()
    src = _src_dir(tmp_path)
    publish_dir(src, uri)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "new.txt").write_text("the user's file of the same name")
    (dest / "mine.txt").write_text("mine")
    with pytest.raises(InputError, match=TARGET_EXISTS):
        fetch_dir(uri, dest)
    assert (dest / "new.txt").read_text() == "the user's file of the same name"
    fetch_dir(uri, dest, overwrite=True)  # swapped in whole: nothing of the old folder is merged
    assert sorted(p.name for p in dest.iterdir()) == ["MANIFEST.json", "new.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    fetch_dir(uri, empty)  # an empty folder is fine
    assert (empty / "new.txt").read_text() == "new\n"


def test_quickstart_keeps_the_critic_run_under_its_workdir(tmp_path: Path) -> None:
    """The critic SFT run's folder goes under the workdir, one per run — never `./runs/<run_name>`."""
    from firm.quickstart.models import SIZES
    from firm.quickstart.run import pipeline_parameters, unique_dir

    runs = [unique_dir(tmp_path / "critic-runs", "edit") for _ in range(2)]
    assert runs[0] != runs[1] and all(r.parent == tmp_path / "critic-runs" for r in runs)
    p = tmp_path
    params = pipeline_parameters("edit", SIZES["tiny"], critic=p, policy=p, manifest=p, teacher="http://t",
                                 bench="b", prompts=p, eval_prompts=p, critic_runs=runs[0])  # fmt: skip
    overrides = next(x for x in params if x.startswith("critic_overrides="))
    assert f"output_dir={runs[0]}]" in overrides
    src = (REPO / "firm" / "quickstart" / "run.py").read_text()
    assert "critic_runs=unique_dir(work / " in src  # what run_task passes


# ------------------------------------------------------------------------------------------------ curation
class _NoTeacher:
    """A teacher that must never be asked (every item is dropped before)."""

    name = model_id = "no-teacher"
    concurrency = 1

    def check(self) -> None:
        return None

    def generate(self, requests):  # type: ignore[no-untyped-def]
        raise AssertionError("no item should reach the teacher")

    def close(self) -> None:
        return None


def _edit_line(tmp: Path, source: str = "s.png", edited: str = "e.png") -> str:
    import json

    return json.dumps({"source": source, "edited": edited, "instruction": "add a red square"})


@pytest.mark.parametrize(
    ("case", "content", "expect"),
    [
        ("empty manifest", "", "no items (empty file)"),
        ("all lines malformed", "{oops\nnot json\n", "bad_json=2"),
        (
            "a JSON array",
            '[{"source": "s.png", "edited": "e.png", "instruction": "x"}]\n',
            "not a JSON array",
        ),
        ("no readable images", "LINES", "missing_image=2"),
    ],
)
def test_curation_that_keeps_nothing_fails_with_drop_counts(
    case: str, content: str, expect: str, tmp_path: Path, firm_home: Path
) -> None:
    from firm.curation.edit import EditCurationConfig, curate_edit
    from firm.errors import InputError

    manifest = tmp_path / "m.jsonl"
    if content == "LINES":
        content = _edit_line(tmp_path) + "\n" + _edit_line(tmp_path, "x.png", "y.png") + "\n"
    manifest.write_text(content)
    out = tmp_path / "ds"
    cfg = EditCurationConfig(input=str(manifest), out=str(out), cache="off", work_dir=str(tmp_path / "w"),
                             progress=False)  # fmt: skip
    with pytest.raises(InputError, match="nothing was published") as info:
        curate_edit(cfg, _NoTeacher())  # type: ignore[arg-type]
    assert expect in str(info.value)
    assert not out.exists()


def test_import_that_keeps_nothing_fails(tmp_path: Path, firm_home: Path) -> None:
    rel = tmp_path / "release.jsonl"
    rel.write_text("{oops\n[1, 2]\n")
    res = CliRunner().invoke(app, ["data", "import-firm-gen", str(rel), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 1 and "imported no rows" in res.stderr and "nothing was published" in res.stderr
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------------------------------------ environment
@pytest.mark.parametrize("value", ["junk", "-1", "nan"])
def test_an_environment_setting_that_does_not_parse_is_rejected_by_name(
    value: str, tmp_path: Path, firm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIRM_PROGRESS_INTERVAL", value)
    res = CliRunner().invoke(app, ["storage", "ls", str(tmp_path)])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: FIRM_PROGRESS_INTERVAL=") and res.stderr.count("\n") == 1, res.stderr


# ------------------------------------------------------------------------------------------------ misdirected errors
def _one_error(res, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_mistyped_local_model_path_fails_at_once(
    tmp_path: Path, firm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firm.errors import InputError
    from firm.storage.model_ref import check_model_ref

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    made = CliRunner().invoke(app, ["bench", "make-synthetic", "--out", "bench", "--n", "1", "--size", "32"])
    assert made.exit_code == 0, made.output
    res = CliRunner().invoke(
        app, ["bench", "run", "--critic", "runs/nonexistent", "--bench", "bench", "--out", "o"]
    )
    _one_error(res, "--critic=runs/nonexistent: no such directory")
    (tmp_path / "models").mkdir()
    for value in ("./nope", "/no/such/dir", "models/typo", "runs/x", "a/b/c", "justaname"):
        with pytest.raises(InputError, match="no such directory"):
            check_model_ref(value, "model.path")
    assert check_model_ref("Qwen/Qwen3-VL-8B-Instruct", "model.path") == "Qwen/Qwen3-VL-8B-Instruct"
    assert check_model_ref("s3://bucket/critic", "model.path") == "s3://bucket/critic"
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    res = CliRunner().invoke(app, ["critic", "train", "--config", "critic/tiny_cpu", f"data.dataset={data}",
                                   "model.path=runs/tiny-critic-typo", f"output_dir={tmp_path / 'r'}"])  # fmt: skip
    _one_error(res, "model.path=runs/tiny-critic-typo: no such directory")


def test_rl_sample_with_a_bad_policy_or_lora_is_one_line(tmp_path: Path, firm_home: Path) -> None:
    not_a_policy = tmp_path / "pol"
    not_a_policy.mkdir()
    base = ["rl", "sample", "--prompt", "a cat", "--out", str(tmp_path / "o")]
    _one_error(
        CliRunner().invoke(app, [*base, "--policy", str(not_a_policy)]), "--policy=", "model_index.json"
    )
    _one_error(
        CliRunner().invoke(app, [*base, "--policy", "runs/nope"]), "--policy=runs/nope: no such directory"
    )
    _one_error(
        CliRunner().invoke(app, [*base, "--policy", str(not_a_policy), "--lora", "runs/no-lora"]),
        "--lora=runs/no-lora: no such directory",
    )
    assert not (tmp_path / "o").exists()


def test_an_unreachable_reward_endpoint_is_found_before_training(firm_home: Path) -> None:
    from firm.errors import ConfigError
    from firm.processes import free_port
    from firm.rl.config import load_config
    from firm.rl.train import check_reward_reachable

    port = free_port()
    cfg = load_config(
        _recipe("rl/tiny_qwen_edit_nft"), ["reward.kind=triton", f"reward.url=127.0.0.1:{port}"]
    )
    with pytest.raises(ConfigError, match=rf"reward.url=127.0.0.1:{port}: no reward endpoint is reachable"):
        check_reward_reachable(cfg, timeout=1.0)


def _recipe(name: str) -> Path:
    from firm.recipes import resolve_config

    return Path(resolve_config(name))


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_config_file_says_so(text: str, tmp_path: Path) -> None:
    from firm.critic.sft_config import load_sft_config
    from firm.errors import ConfigError
    from firm.rl.config import load_config

    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError, match="empty file"):
        load_sft_config(str(empty))
    with pytest.raises(ConfigError, match="empty file"):
        load_config(empty)


def test_data_stats_on_a_missing_path_says_it_does_not_exist(tmp_path: Path, firm_home: Path) -> None:
    res = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "nope")])
    _one_error(res, "no such file or directory")
    assert "not a critic SFT dataset" not in res.stderr


def test_doctor_reports_a_malformed_firm_config_as_settings(
    tmp_path: Path, firm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from firm.cli import doctor_cmd

    bad = tmp_path / "firm.yaml"
    bad.write_text("store_uri: [unclosed\n")
    monkeypatch.setenv("FIRM_CONFIG", str(bad))
    rows = {name: (status, detail) for status, name, detail in doctor_cmd.run_checks()}
    assert rows["settings"][0] == "FAIL" and "invalid YAML" in rows["settings"][1]
    assert rows["object store"][0] != "FAIL" and "invalid YAML" not in rows["object store"][1]


# ------------------------------------------------------------------------------------------------ quickstart report
def test_the_quickstart_report_shows_its_grids_and_renders_values_cleanly(tmp_path: Path) -> None:
    import base64
    import io
    import re
    from datetime import UTC, datetime

    from PIL import Image
    from rich.console import Console

    from firm.quickstart.models import SIZES, PipelineRun
    from firm.quickstart.report import write_report
    from firm.reports import page, png_tag

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    run_dir = tmp_path / "pipeline-runs" / "firm-1"
    (run_dir / "eval-policy").mkdir(parents=True)
    (run_dir / "eval-policy" / "samples").write_text(
        page("eval", [("Samples", png_tag(png, "before") + png_tag(png, "after"))])
    )
    (run_dir / "bench-critic").mkdir()
    (run_dir / "bench-critic" / "report").write_text("<!doctype html><html><body>bench</body></html>")
    run = PipelineRun(task="edit", run_dir=run_dir, seconds=1.0, parameters={"seed": "0"}, stages=[])
    out = write_report(tmp_path, [run], size=SIZES["tiny"], started=datetime.now(UTC), seconds=1.0, error=None,
                       console=Console(file=io.StringIO()))  # fmt: skip
    html_page = (out / "index.html").read_text()
    # the policy's sample grids are pictures on the page, beside the report
    for side in ("before", "after"):
        assert f'<img src="edit/samples-{side}.png"' in html_page
        assert (out / "edit" / f"samples-{side}.png").read_bytes() == png
    # artefact pages open as what they are (the KFP artifacts have no extension)
    links = re.findall(r'<a href="([^"]+)"', html_page)
    assert links and all(link.endswith((".html", ".txt")) for link in links), links
    assert all((out / link).is_file() for link in links)
    assert base64.b64encode(png).decode() not in html_page
    # a check holding a dict is text, escaped once; long commands wrap
    assert "&amp;" not in html_page and "{&#x27;" not in html_page and "{'" not in html_page
    assert "<td>critic beats mean baseline per axis</td><td>n/a</td>" in html_page
    assert "white-space:pre-wrap" in html_page
