"""checkov's Kubernetes checks pass on the rendered chart (defaults and every ci/*.yaml) and on every kustomize
overlay, except the checks listed with their reasons in deploy-checks-skips.yaml — each of which must still fire
somewhere (no stale skips), and two of which the chart's escape hatches (digests, pull policy) clear."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import tools
from tests.deploy.conftest import CI_VALUES, OVERLAY_DIRS, SKIPS_FILE, Helm

DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def checkov_bin() -> Path:
    return tools.checkov()


@pytest.fixture(scope="module")
def manifests(helm: Helm, kustomize: Callable[[Path], str], write_values, tmp_path_factory) -> Path:
    """One directory with every rendering checkov looks at (one file each)."""
    root = tmp_path_factory.mktemp("checkov")
    (root / "chart-default.yaml").write_text(helm.template())
    for path in CI_VALUES:
        (root / f"chart-{path.stem}.yaml").write_text(helm.template(path))
    for overlay in OVERLAY_DIRS:
        (root / f"kustomize-{overlay.name}.yaml").write_text(kustomize(overlay))
    # the escape hatches: every image pinned by digest and pulled Always
    pinned = {
        "images": {
            "pullPolicy": "Always",
            **{
                k: {"repository": f"firm-platform/firm-{k}", "digest": DIGEST}
                for k in ("trainer", "pipeline", "triton")
            },
        },
        "minio": {"image": {"digest": DIGEST, "pullPolicy": "Always"}},
    }
    (root / "pinned.yaml").write_text(helm.template(write_values(pinned)))
    return root


def _checkov(exe: Path, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), "-d", str(directory), "--framework", "kubernetes", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=directory,
    )


@pytest.fixture(scope="module")
def failures(checkov_bin: Path, manifests: Path) -> dict[str, set[str]]:
    """check id → files it fails in, from a run without skips."""
    proc = _checkov(checkov_bin, manifests, "--output", "json")
    assert proc.stdout.strip(), proc.stderr
    report: Any = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    out: dict[str, set[str]] = {}
    for r in reports:
        assert r["check_type"] == "kubernetes"
        assert r["summary"]["passed"] > 100, r["summary"]  # checkov really looked at the objects
        for f in r["results"]["failed_checks"]:
            out.setdefault(f["check_id"], set()).add(Path(f["file_path"]).name)
    return out


def test_only_the_listed_checks_fail(failures: dict[str, set[str]], skips: dict[str, Any]) -> None:
    listed = skips["checkov"]
    for check_id, entry in listed.items():
        assert entry.get("title") and len(entry.get("reason", "")) > 40, (
            f"{check_id}: give the title and a reason"
        )
    unexpected = {k: sorted(v) for k, v in failures.items() if k not in listed}
    assert unexpected == {}, f"fix these, or list them with a reason in {SKIPS_FILE.name}"
    stale = sorted(set(listed) - set(failures))
    assert stale == [], f"no longer failing anywhere; remove from {SKIPS_FILE.name}"


def test_checkov_passes_with_the_listed_skips(
    checkov_bin: Path, manifests: Path, skips: dict[str, Any]
) -> None:
    proc = _checkov(checkov_bin, manifests, "--compact", "--skip-check", ",".join(skips["checkov"]))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_digests_and_pull_policy_values_clear_their_checks(failures: dict[str, set[str]]) -> None:
    for check_id in ("CKV_K8S_43", "CKV_K8S_15"):
        assert "pinned.yaml" not in failures.get(check_id, set()), check_id
        assert "chart-default.yaml" in failures[check_id]
