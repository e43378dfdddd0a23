"""The quickstart's records: its sizes, the stages of the `firm` pipeline it runs, and what a run recorded of them
(written by `firm.quickstart.run`, read by `firm.quickstart.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from pipelines.local_view import StageResult

Task = Literal["edit", "gen"]
TaskChoice = Literal["edit", "gen", "both"]
SizeName = Literal["tiny", "small"]

# The pipeline's tasks in DAG order: (KFP task name, its display name — what the KFP UI, the terminal and the report
# call the stage).
STAGES: list[tuple[str, str]] = [
    ("curate-dataset", "curate"),
    ("train-critic", "train critic"),
    ("bench-critic", "bench critic"),
    ("export-to-triton", "export to Triton"),
    ("deploy-reward-service", "deploy reward service"),
    ("rl-train", "RL"),
    ("eval-policy", "evaluate policy"),
    ("stop-reward-service", "stop reward service"),
]


class QuickstartSize(BaseModel):
    """How much the quickstart does. Both sizes use the tiny models (the critic random-init from configs)."""

    name: SizeName
    image_size: int = Field(description="synthetic images, pixels (112: 4 × 4 vision tokens)")
    curation_items: int = Field(description="source items the teacher curates (edit: × 2 axes)")
    sft_steps: int = Field(description="critic SFT steps (global batch 8 over 2 processes)")
    bench_items: int
    rl_steps: int
    rl_prompts: int = Field(description="training prompts (edit: synthetic sources)")
    rl_eval_prompts: int = Field(description="held-out prompts of the before/after evaluation")
    rl_resolution: int = Field(description="rollout pixels (128: the critic reads them at its 112-px size)")
    policy_warmup_steps: int = Field(description="flow-matching steps of the base policy before RL")
    policy_warmup_items: int = Field(description="synthetic items the warm-up learns from")


SIZES: dict[str, QuickstartSize] = {
    "tiny": QuickstartSize(
        name="tiny", image_size=112, curation_items=400, sft_steps=300, bench_items=40, rl_steps=6,
        rl_prompts=16, rl_eval_prompts=8, rl_resolution=128,
        policy_warmup_steps=400, policy_warmup_items=128,
    ),
    "small": QuickstartSize(
        name="small", image_size=112, curation_items=800, sft_steps=800, bench_items=80, rl_steps=16,
        rl_prompts=32, rl_eval_prompts=8, rl_resolution=128,
        policy_warmup_steps=1000, policy_warmup_items=256,
    ),
}  # fmt: skip


class PipelineRun(BaseModel):
    """One `firm` pipeline run of the quickstart (one task)."""

    task: Task
    run_dir: Path
    seconds: float
    parameters: dict
    stages: list[StageResult] = Field(description="the DAG's stages in order, as the local run recorded them")
    base_policy: dict | None = Field(None, description="the policy RL starts from: path and warm-up record")
