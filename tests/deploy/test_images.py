"""images/: every Dockerfile passes hadolint without a warning (.hadolint.yaml ignores nothing), is multi-stage (a
wheel of firm built in a builder stage, installed in the final one), pins its base images, runs as uid 1000,
carries OCI labels and no credentials; the build context `.dockerignore` lets in exactly what the builder copies,
and that set builds a wheel holding firm, the compiled pipelines and the `firmctl` entry point. No container engine
exists here: the images themselves are not built by the tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.conftest import DOCKERFILES
from tests.deploy.render_manifests import REPO

HADOLINT_CONFIG = REPO / ".hadolint.yaml"
OCI_LABELS = ("title", "description", "version", "revision", "source", "licenses")


@pytest.fixture(scope="module")
def hadolint() -> Path:
    return tools.hadolint()


def _lint(exe: Path, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_four_images_exist() -> None:
    names = {str(p.relative_to(REPO / "images")) for p in DOCKERFILES}
    assert names == {
        "firm-trainer/Dockerfile",
        "firm-triton/Dockerfile",
        "firm-triton/Dockerfile.vllm",
        "firm-pipeline/Dockerfile",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO / "images")))
def test_hadolint_has_nothing_to_say(hadolint: Path, dockerfile: Path) -> None:
    proc = _lint(hadolint, dockerfile)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_configuration_ignores_nothing_silently() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert config["failure-threshold"] == "warning"
    text = HADOLINT_CONFIG.read_text()
    for rule in config.get("ignored") or []:  # each ignored rule needs a comment saying why
        assert re.search(rf"#.*\n\s*- {rule}\b", text), f"{rule} is ignored without a reason"


def test_hadolint_catches_a_bad_dockerfile(hadolint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = _lint(hadolint, bad)
    assert proc.returncode != 0 and "DL3007" in proc.stdout and "DL3013" in proc.stdout, proc.stdout


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO / "images")))
def test_dockerfile_is_multi_stage_pinned_non_root_labelled_and_secret_free(dockerfile: Path) -> None:
    ins = _instructions(dockerfile)
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args.setdefault(k, v)
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith(" AS builder"), froms
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0])
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"base image {image} is not pinned by tag"
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    builder = ins[: max(i for i, (w, _) in enumerate(ins) if w == "FROM")]
    assert any(w == "RUN" and "pip wheel" in r and "--no-deps" in r for w, r in builder)
    assert any(w == "COPY" and r.startswith("--from=builder /wheels/") for w, r in final)
    assert any(w == "RUN" and re.search(r"pip install .*/tmp/wheels/firm-\*\.whl", r) for w, r in final)
    users = [(i, r) for i, (w, r) in enumerate(final) if w == "USER"]
    assert users and users[-1][1] == "1000:1000", users
    assert all(w != "RUN" for w, _ in final[users[-1][0] :]), "RUN after dropping to uid 1000"
    labels = " ".join(r for w, r in final if w == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels, label
    for word, rest in ins:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY)\w*=", rest, re.I), rest
        if word == "COPY" and not rest.startswith("--from"):
            assert rest.split()[0] not in (".", "./"), "copies the whole build context"


def _context_sources() -> set[str]:
    sources = set()
    for dockerfile in DOCKERFILES:
        for word, rest in _instructions(dockerfile):
            if word == "COPY" and not rest.startswith("--from"):
                sources.update(rest.split()[:-1])
    return sources


def test_dockerignore_admits_exactly_what_the_images_copy() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    assert lines[0] == "*", "the context starts empty and admits files one by one"
    admitted = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    sources = _context_sources()
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
        assert any(src == a or src.startswith(a + "/") for a in admitted), (
            f"COPY {src}: excluded by .dockerignore"
        )
    assert admitted <= {s.split("/")[0] for s in sources} | {"images"}, "admits files no image copies"


def test_the_build_context_builds_a_complete_firm_wheel(tmp_path: Path) -> None:
    """What the builder stage does: `pip wheel --no-deps .` on the files it copies, nothing else."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for src in sorted(_context_sources()):
        if src.startswith("images/"):
            continue
        path = REPO / src
        if path.is_dir():
            shutil.copytree(path, ctx / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, ctx / src)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            "w",
            ".",
        ],
        cwd=ctx,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (ctx / "w").glob("firm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "firm/cli/main.py",
        "firm/serving/backend/reward_models.py",
        "firm/launch/torchrun_quiet.py",
    ):
        assert required in names
    assert any(n.startswith("pipelines/compiled/") and n.endswith(".yaml") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "firmctl = firm.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_one_torch_and_cuda_pair_across_the_images() -> None:
    """The trainer's base image, the Triton image's torch wheel, the pipeline image and the Makefile's TORCH_SPEC name
    one torch version; the GPU images one CUDA version (a critic serves on the numerics it was trained with). The vLLM
    Triton image (Dockerfile.vllm) is the exception: vLLM pins its own torch, which the image keeps."""
    make = re.search(r"^TORCH_SPEC \?= torch==([\d.]+)$", (REPO / "Makefile").read_text(), re.M)
    assert make, "Makefile TORCH_SPEC"
    version = make.group(1)
    text = {p.parent.name: p.read_text() for p in DOCKERFILES if p.name == "Dockerfile"}
    trainer = re.search(r"ARG PYTORCH_IMAGE=pytorch/pytorch:([\d.]+)-cuda([\d.]+)-", text["firm-trainer"])
    assert trainer and trainer.group(1) == version, trainer
    cuda = trainer.group(2).replace(".", "")
    for image in ("firm-triton", "firm-pipeline"):
        pinned = re.search(r"^ARG TORCH_VERSION=([\d.]+)$", text[image], re.M)
        assert pinned and pinned.group(1) == version, image
        assert '"torch==${TORCH_VERSION}"' in text[image], f"{image} installs the pinned torch"
    triton_index = re.search(r"^ARG TORCH_INDEX=\S+/whl/cu(\d+)$", text["firm-triton"], re.M)
    assert triton_index and triton_index.group(1) == cuda, (
        "the Triton image's torch wheel is built for the trainer's CUDA"
    )
