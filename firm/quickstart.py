"""The local end-to-end job (`make quickstart` / `firmctl quickstart`): FIRM's stages on tiny models, one machine.

1. **critic** — build a tiny random-init Qwen3-VL critic (`firm.models.tiny`);
2. **curate** — publish a learnable synthetic critic SFT dataset to the configured object store
   (`firm.curation.synthetic_sft`: execution = how many of the requested red squares the edit drew);
3. **train** — critic SFT with the shipped `critic/tiny_cpu` recipe (`firm.critic.sft`), checkpoints published to
   the store, a `save_pretrained` export at the end;
4. **bench** — FIRM-Bench metrics on a held-out synthetic bench for a random critic, the untrained critic and the
   trained one (`firm.bench`), so the trained critic visibly beats chance;
5. **serve** — export the trained critic as a Triton model repository, start the bundled `tritonserver` on
   loopback, and score edits through `RewardClient` (CME reward from the execution and consistency judgements).

Everything uses the same code as a cluster run; only the backends (local store, one process, local Triton) differ.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console

from firm.schemas import RewardBreakdown

SFT_ITEMS = 400
BENCH_ITEMS = 40
IMAGE_SIZE = 112  # 16 image tokens per image: enough detail for the tiny critic to count squares
REQUESTED = 4


class QuickstartResult(BaseModel):
    """What the quickstart produced, with the numbers it printed."""

    workdir: Path
    dataset: str
    trained_critic: Path
    checkpoints: list[str]
    final_eval: dict[str, float | None]
    bench_mae: dict[str, float | None]
    rewards: list[RewardBreakdown] = []
    expected_execution: list[int] = []


def run_quickstart(
    workdir: str | Path,
    *,
    steps: int = 240,
    serve: bool = True,
    console: Console | None = None,
) -> QuickstartResult:
    """Run the five stages under `workdir` (created; existing stage outputs there are reused)."""
    from firm.bench.backends import LocalCriticBackend, RandomBackend
    from firm.bench.runner import run_bench
    from firm.bench.synthetic import make_synthetic_bench
    from firm.config import get_settings
    from firm.critic.sft import train
    from firm.critic.sft_config import load_sft_config
    from firm.curation.synthetic_sft import write_synthetic_sft_dataset
    from firm.models.tiny import build_tiny_critic

    con = console or Console(stderr=True)
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    con.rule("[bold]1/5 critic")
    base = work / "tiny-critic"
    if not base.exists():
        build_tiny_critic(base, size="tiny", seed=0)
    con.print(f"tiny Qwen3-VL critic: {base}")

    con.rule("[bold]2/5 curate")
    dataset = f"{get_settings().bucket_uris()['datasets']}/quickstart-sft-{work.name}"
    if not _published(dataset):
        write_synthetic_sft_dataset(
            dataset, n_edit=SFT_ITEMS, axes=["execution", "consistency"], requested=REQUESTED,
            size=IMAGE_SIZE, val_fraction=0.05, seed=0,
        )  # fmt: skip
    con.print(f"synthetic critic SFT dataset published: {dataset}")

    con.rule("[bold]3/5 train")
    cfg = load_sft_config(
        "critic/tiny_cpu",
        [
            f"model.path={base}",
            f"data.dataset={dataset}",
            f"output_dir={work / 'runs'}",
            f"run_name=quickstart-{datetime.now(UTC):%Y%m%d-%H%M%S}",  # a fresh run each time
            f"max_steps={steps}",
        ],
    )
    result = train(cfg)
    if result.export_dir is None:
        from firm.errors import FirmError

        raise FirmError("critic SFT finished without an export directory")
    con.print(f"trained critic: {result.export_dir}  final eval: {result.final_eval}")

    con.rule("[bold]4/5 bench")
    bench = make_synthetic_bench(
        work / "bench", BENCH_ITEMS, seed=1000, size=IMAGE_SIZE, edit_axes=("execution", "consistency"),
        n_gen=0, requested=REQUESTED,
    )  # fmt: skip
    maes: dict[str, float | None] = {}
    for name, backend in (
        ("random", RandomBackend(0)),
        ("untrained", LocalCriticBackend(str(base), max_new_tokens=48)),
        ("trained", LocalCriticBackend(str(result.export_dir), max_new_tokens=48)),
    ):
        out = work / "bench-results" / name
        shutil.rmtree(out, ignore_errors=True)  # this run's critic, not a resume of an earlier quickstart's
        report = run_bench(backend, bench, out, batch_size=20, progress=True).report
        maes[name] = report.mae("edit", "overall")
        con.print(f"{name:>10}: edit overall MAE = {_fmt(maes[name])}   report: {out / 'report.md'}")

    qs = QuickstartResult(
        workdir=work,
        dataset=dataset,
        trained_critic=result.export_dir,
        checkpoints=result.checkpoints,
        final_eval=result.final_eval,
        bench_mae=maes,
    )
    if serve:
        con.rule("[bold]5/5 serve")
        qs.rewards, qs.expected_execution = _serve_and_score(result.export_dir, work, con)
    return qs


def _published(uri: str) -> bool:
    from firm.errors import StorageError
    from firm.storage import read_manifest

    try:
        read_manifest(uri)
        return True
    except StorageError:
        return False


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _raw(x01: float | None) -> str:
    """A normalised sub-score back on the critic's 1..5 scale."""
    return "n/a" if x01 is None else f"{1 + 4 * x01:g}"


def _serve_and_score(critic: Path, work: Path, con: Console) -> tuple[list[RewardBreakdown], list[int]]:
    from firm.curation.synthetic import synthetic_edit_items
    from firm.serving.client import RewardClient
    from firm.serving.export import ExportConfig, export_repository
    from firm.serving.server import TritonServer

    repo = export_repository(
        ExportConfig(critic=str(critic), task="edit", max_new_tokens=48, threads=1),
        work / "triton-repo",
        overwrite=True,
    )
    items = synthetic_edit_items(6, seed=2000, size=IMAGE_SIZE, requested=REQUESTED)
    with TritonServer(repo) as server:
        con.print(f"tritonserver ready: {server.endpoints()}")
        client = RewardClient([server.grpc_url])
        try:
            rewards = client.score_edit([(it.source, it.edited, it.instruction) for it in items])
        finally:
            client.close()
    for it, r in zip(items, rewards, strict=True):
        con.print(
            f"{it.id}: drew {it.drawn}/{it.requested} → true execution {it.score('execution')}, "
            f"critic execution {_raw(r.execution)}, consistency {_raw(r.consistency)}, "
            f"CME reward {_fmt(r.reward)} ({r.status})"
        )
    return rewards, [it.score("execution") for it in items]
