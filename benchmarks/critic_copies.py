"""One critic per server: resident memory of a Triton reward server by layout, measured side by side.

Run (CPU; what BENCHMARKS.md reports):
    .venv/bin/python benchmarks/critic_copies.py --sizes tiny small

Layouts, each exported from the same critic directory and started as a real tritonserver on loopback ports:
- `critic`: `firm_critic` alone (`firm_engine` + the `firm_critic` ensemble: one copy of the weights, one stub);
- `all`: `firm_critic` + `firm_edit_reward` + `firm_gen_reward` as exported today — three ensembles over the one
  `firm_engine`, so still one stub and one copy of the weights;
- `three-copies`: `firm_engine` and two renamed copies of it in the same server — what the earlier design cost,
  where `firm_critic` and each reward model loaded their own critic in their own python stub (measured as three
  critic-holding models, since that design is no longer exported).

Every model gets one request first (weights loaded, first generate done), then the whole process tree
(tritonserver + one python stub per model instance) is measured from /proc: PSS (shared pages split between the
processes that share them — what the tree really holds) and RSS (shared pages counted in every process). Ratios
are to the `critic` layout of the same size, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

MB = 1024 * 1024


def export(critic: Path, layout: str, out: Path) -> Path:
    from firm.serving.export import ExportConfig, export_repository

    task = "critic" if layout in ("critic", "three-copies") else "all"
    repo = Path(export_repository(ExportConfig(critic=str(critic), task=task, max_new_tokens=16), out))
    if layout == "three-copies":
        # the weights stay where the engine's `critic` parameter points; each copy loads them
        for k in (2, 3):
            copy = repo / f"firm_engine_{k}"
            shutil.copytree(repo / "firm_engine", copy, ignore=shutil.ignore_patterns("critic"))
            cfg = copy / "config.pbtxt"
            cfg.write_text(
                re.sub(r'name: "firm_engine"', f'name: "firm_engine_{k}"', cfg.read_text(), count=1)
            )
    return repo


def warm(url: str, models: list[str]) -> None:
    """One request per model, so every stub has loaded what it needs and generated once."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from firm.models.images import edit_pair, png_bytes

    src, dst, ins = edit_pair()
    client = grpcclient.InferenceServerClient(url)

    def col(name: str, values: list[bytes], cols: int = 1) -> object:
        arr = np.array([values], dtype=np.object_).reshape(1, cols)
        i = grpcclient.InferInput(name, list(arr.shape), "BYTES")
        i.set_data_from_numpy(arr)
        return i

    for m in models:
        if m.startswith(("firm_critic", "firm_engine_")):
            inputs = [col("images", [png_bytes(src), png_bytes(dst)], 2), col("rubric_id", [b"edit.execution"]),
                      col("text", [ins.encode()])]  # fmt: skip
        elif m == "firm_edit_reward":
            inputs = [col("source_image", [png_bytes(src)]), col("edited_image", [png_bytes(dst)]),
                      col("instruction", [ins.encode()])]  # fmt: skip
        else:
            inputs = [col("image", [png_bytes(dst)]), col("prompt", [b"A red circle."])]
        client.infer(m, inputs)
    client.close()


def measure(critic: Path, layout: str, root: Path) -> dict[str, object]:
    from firm.serving.server import TritonServer

    repo = export(critic, layout, root / f"repo-{layout}")
    models = sorted(
        p.name for p in repo.iterdir() if (p / "config.pbtxt").exists() and p.name != "firm_engine"
    )
    t0 = time.perf_counter()
    with TritonServer(repo) as srv:
        start_s = time.perf_counter() - t0
        warm(srv.grpc_url, models)
        time.sleep(1.0)
        mem = srv.memory()
    return {"layout": layout, "models": models, "start_s": round(start_s, 1), "processes": mem["processes"],
            "pss_mb": round(mem["pss"] / MB, 1), "rss_mb": round(mem["rss"] / MB, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    ap.add_argument("--layouts", nargs="+", default=["critic", "all", "three-copies"])
    args = ap.parse_args()
    from firm.models.tiny import build_tiny_critic

    rows = []
    with tempfile.TemporaryDirectory(prefix="firm-copies-") as tmp:
        root = Path(tmp)
        for size in args.sizes:
            critic = build_tiny_critic(root / f"critic-{size}", size=size)  # type: ignore[arg-type]
            weights_mb = sum(f.stat().st_size for f in critic.glob("*.safetensors")) / MB
            base = None
            for layout in args.layouts:
                row = {
                    "size": size,
                    "weights_mb": round(weights_mb, 1),
                    **measure(critic, layout, root / size),
                }
                if layout == "critic":
                    base = row
                if base is not None:
                    row["pss_vs_critic"] = round(row["pss_mb"] / base["pss_mb"], 2)  # type: ignore[operator]
                    row["rss_vs_critic"] = round(row["rss_mb"] / base["rss_mb"], 2)  # type: ignore[operator]
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| critic | layout | models | processes | PSS MB | RSS MB | PSS vs critic | RSS vs critic |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} ({r['weights_mb']} MB weights) | {r['layout']} | {len(r['models'])} | {r['processes']} "
              f"| {r['pss_mb']} | {r['rss_mb']} | {r.get('pss_vs_critic', '–')} | {r.get('rss_vs_critic', '–')} |")  # fmt: skip


if __name__ == "__main__":
    main()
