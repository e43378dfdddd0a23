"""`firmctl rubrics import-official` on a fixture in the official file layout (FIRM's own texts, the official
constant names and placeholder style): what the pack renders equals what the official templates produce the way
the official servers format them; digests pin the source; a URL prefix reads the same files; bad sources fail in
one line."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from firm.cli.main import app
from firm.errors import InputError
from firm.rewards.official import EDIT_FILE, GEN_FILE
from firm.rewards.packs import load_pack, pack_mismatch
from firm.rubric_store import import_official

FIXTURE = Path(__file__).with_name("official_layout")


def _module(rel: str) -> ModuleType:
    """The fixture file itself (FIRM's own test file, so importing it is fine)."""
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_").removesuffix(".py"), FIXTURE / rel)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rendered_text_equals_the_official_formatting() -> None:
    pack = import_official(str(FIXTURE))
    edit, gen = _module(EDIT_FILE), _module(GEN_FILE)
    instruction, prompt = "Turn the {red} car blue", 'Two cats, one says "hi" {loudly}'
    # editing server: template.format(prompt=<instruction>, requirement=<metadata or "">)
    for axis, const in (("execution", edit.SCORE_EXECUTION), ("consistency", edit.SCORE_CONSISTENCY)):
        rubric = pack.get("edit", axis)
        assert rubric.render(instruction=instruction) == const.format(prompt=instruction, requirement="")
        assert rubric.generation.max_new_tokens == 256 and rubric.images.codec == "jpeg"
        assert rubric.layout.image_order == ("source", "edited") and rubric.system is None
    # generation server: SCORE is formatted (it contains {prompt}); Quality_PROMPT is used verbatim
    ins = pack.get("gen", "instruction")
    assert ins.render(prompt=prompt) == gen.SCORE.format(prompt=prompt, requirement="")
    assert ins.render(prompt=prompt, requirement="no text") == gen.SCORE.format(
        prompt=prompt, requirement="no text"
    )
    assert "\\boxed{[Rating]}" in ins.render(prompt=prompt)
    assert pack.get("gen", "quality").render() == gen.Quality_PROMPT
    assert ins.generation.max_new_tokens == 8192
    # student rubrics only: the official code ships no curation prompts
    with pytest.raises(InputError, match=r"no rubric 'edit\.execution\.teacher'"):
        pack.get("edit", "execution", "teacher")
    # the released critics are recognised as trained on this pack
    assert pack_mismatch("VisionXLab/FIRM-Gen-8B", None, pack) is None
    assert pack_mismatch("VisionXLab/FIRM-Gen-8B", None, load_pack()) is not None


def test_digest_pins_the_source(tmp_path: Path) -> None:
    pack = import_official(str(FIXTURE))
    digest = pack.source["sha256"]
    assert import_official(str(FIXTURE), expect_sha256=digest).sha256 == pack.sha256
    changed = tmp_path / "checkout"
    shutil.copytree(FIXTURE, changed)
    f = changed / EDIT_FILE
    f.write_text(f.read_text().replace("fully done", "completely done"))
    with pytest.raises(InputError, match=f"has digest [0-9a-f]{{64}}, not the expected {digest}"):
        import_official(str(changed), expect_sha256=digest)
    assert import_official(str(changed)).sha256 != pack.sha256


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (
            lambda t: t.replace("SCORE_EXECUTION =", "SCORE_EXEC ="),
            "defines no string constant SCORE_EXECUTION",
        ),
        (
            lambda t: t.replace("Instruction: {prompt}\n\nJudge", "Instruction: {prompt} {style}\n\nJudge"),
            r"unknown official placeholder \{style\}",
        ),
        (lambda t: t + "\nif True:\n  x = (", "is not valid Python"),
    ],
)
def test_bad_official_source_is_one_line(tmp_path: Path, patch, message: str) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(FIXTURE, checkout)
    f = checkout / EDIT_FILE
    f.write_text(patch(f.read_text()))
    with pytest.raises(InputError, match=message) as info:
        import_official(str(checkout))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="not found"):
        import_official(str(tmp_path / "nowhere"))


def test_nothing_in_the_source_is_executed(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(FIXTURE, checkout)
    marker = tmp_path / "executed"
    f = checkout / GEN_FILE
    f.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n" + f.read_text())
    import_official(str(checkout))
    assert not marker.exists()


@pytest.fixture
def fixture_http() -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(FIXTURE))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/pinned"
    srv.shutdown()
    srv.server_close()


def test_url_prefix_reads_the_same_files(fixture_http: str) -> None:
    local = import_official(str(FIXTURE))
    with pytest.raises(InputError, match="answered HTTP 404"):
        import_official(fixture_http)  # /pinned/... does not exist
    remote = import_official(fixture_http.removesuffix("/pinned"))
    assert remote.sha256 == local.sha256 and remote.source["files"] == local.source["files"]


def test_cli_import_writes_a_pack_found_by_name(firm_home: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["rubrics", "import-official", str(FIXTURE)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert Path(out["path"]) == firm_home / "rubrics" / "firm-official.yaml"
    assert out["sha256"] == load_pack("firm-official").sha256 == import_official(str(FIXTURE)).sha256
    assert "import-official" in (firm_home / "rubrics" / "firm-official.yaml").read_text().splitlines()[0]
    listed = json.loads(runner.invoke(app, ["rubrics", "list"]).stdout)
    assert [p["name"] for p in listed] == ["firm-v1", "firm-official"]
    bad = runner.invoke(app, ["rubrics", "import-official", str(FIXTURE), "--expect-sha256", "0" * 64])
    assert (
        bad.exit_code == 1
        and bad.stderr.startswith("error: import-official:")
        and bad.stderr.count("\n") == 1
    )
