"""`RLConfig`: one documented config for FIRM's RL trainer (DiffusionNFT and Flow-GRPO, editing and generation).

Recipes under `firm/recipes/rl/*.yaml` are YAML dumps of this model; `key.sub=value` overrides on the command line
are applied on top (values parsed as YAML, so `training.steps=5` is an int and `reward.kind=redness` a string).
Defaults are the paper's settings where the paper gives one (LoRA r=32/α=64, β=1, advantage clip 5, KL 1e-4, AdamW
wd 1e-4, grad-clip 1.0) and the official FIRM-Reward / DiffusionNFT / Flow-GRPO trainers' values elsewhere: one std over
all rewards of a step, one accumulated optimizer step per RL step, an EMA (decay 0.9) of the LoRA for export and
evaluation, the deterministic second-order "dpm2" rollout solver, int(0.99·T) timesteps drawn per sample, the
`attn.*` LoRA targets, and Flow-GRPO's CFG 4.5 and in-order timesteps. `firm/rl/README.md` lists each of them with
the official file and function it was checked against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firm.errors import ConfigError
from firm.overrides import apply_overrides as _apply_overrides
from firm.overrides import blame
from firm.schemas import Task


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyConfig(_Section):
    """Which diffusion policy to train and how to load it."""

    kind: Literal["sd3", "qwen_edit", "flux_kontext", "flux2_klein", "qwen_image", "z_image"] = Field(
        description="the policy family (`firm.rl.policies.registry`): sd3 = SD3/SD3.5, qwen_edit = "
        "Qwen-Image-Edit(-2509/Plus), flux_kontext = FLUX.1-Kontext (editing), flux2_klein = FLUX.2-klein, "
        "qwen_image = Qwen-Image, z_image = Z-Image-Turbo"
    )
    uri: str = Field(
        description="HF id, local directory, or file:// / s3:// URI of a published pipeline directory"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    resolution: int = Field(512, ge=16, description="rollout image size (square), pixels")
    max_sequence_length: int = Field(256, ge=8, description="text tokens for the T5 / VL text encoder")
    gradient_checkpointing: bool = False
    # Qwen-Image-Edit only. The diffusers pipeline resizes the condition image to a 384² area for the VL encoder
    # (its `CONDITION_IMAGE_SIZE`; the VAE copy to a 1024² area) and drops a fixed number of prompt-template tokens;
    # both are settings here (tiny models need small values).
    condition_pixels: int = Field(
        384 * 384,
        ge=16 * 16,
        description="Qwen-Image-Edit: pixel area of the source image the VL encoder sees, resized keeping its aspect "
        "ratio with sides on a 32-pixel grid as QwenImageEditPlusPipeline does (its CONDITION_IMAGE_SIZE, 384²)",
    )
    prompt_template_drop: int | None = Field(
        None,
        ge=0,
        description="prompt-template tokens dropped from the VL encoder output (None = pipeline default)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="family options (guidance embedding vs CFG, text-encoder template, image packing), validated "
        "by the family's own model with the official defaults; an option the family lacks is an error",
    )

    @model_validator(mode="after")
    def _family_options(self) -> PolicyConfig:
        from firm.rl.policies.registry import validate_options

        try:
            validate_options(self.kind, self.options)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    def family_options(self) -> Any:
        """`options` as the family's pydantic model (official defaults filled in)."""
        from firm.rl.policies.registry import validate_options

        return validate_options(self.kind, self.options)


class LoraSettings(_Section):
    rank: int = Field(32, ge=1)
    alpha: float = Field(64.0, gt=0)
    init: Literal["gaussian", "default"] = "gaussian"
    target_modules: list[str] | None = Field(
        None,
        description="module-name suffixes that get a LoRA; None = the policy family's official list "
        "(`firm.rl.policies.registry.FAMILIES[kind].lora_targets`: the `attn.*` projections for SD3/SD3.5 — leaving "
        "SD3.5's second attention `attn2` untouched —, Qwen-Image-Edit and FLUX.1-Kontext; attention plus "
        "feed-forward modules for FLUX.2-klein, Qwen-Image and Z-Image, as their official trainers)",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not t.strip() for t in v)):
            raise ValueError(f"target_modules must be a non-empty list of module names (got {v!r})")
        return v


class SamplingConfig(_Section):
    num_steps: int = Field(10, ge=1, description="rollout denoising steps")
    group_size: int = Field(16, description="K rollouts per prompt (per-prompt group advantages need K ≥ 2)")
    prompts_per_step: int = Field(48, ge=1, description="prompts per optimizer step, summed over all ranks")
    eval_num_steps: int = Field(40, ge=1, description="steps for eval sample grids")
    rollout_policy: Literal["old", "current"] = Field(
        "old", description="NFT: collect rollouts with the EMA (old) policy"
    )
    solver: Literal["dpm2", "euler"] = Field(
        "dpm2",
        description="NFT rollout ODE solver: dpm2 = deterministic multistep second order (the official trainers'), "
        "euler = first order",
    )

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError(
                f"group_size must be ≥ 2 (got {v}): the group advantage needs a standard deviation"
            )
        return v


class NFTConfig(_Section):
    beta: float = Field(1.0, gt=0, description="implicit-policy step β: v± = v_old ± β(v_θ − v_old)")
    adv_clip: float = Field(
        5.0, gt=0, description="advantages are clipped to ±adv_clip; r = A/(2·adv_clip) + 0.5"
    )
    kl_coef: float = Field(1e-4, ge=0, description="weight of MSE(v_θ, v_ref) with the LoRA disabled")
    space: Literal["x0", "velocity"] = Field(
        "x0", description="x0: reference code's adaptive x0-space weighting"
    )
    timestep_fraction: float = Field(
        0.99, gt=0, le=1, description="int(fraction·T) of the T rollout timesteps are trained on (at least 1)"
    )
    timestep_draw: Literal["per_sample", "shared"] = Field(
        "per_sample",
        description="per_sample: each sample draws its own random subset (official); shared: one subset per step",
    )
    ema_max_decay: float = Field(0.5, ge=0, lt=1, description="old-policy EMA decay ramps up to this")
    ema_ramp: float = Field(0.001, ge=0, description="decay grows by this per optimizer step")


class GRPOConfig(_Section):
    noise_level: float = Field(0.7, gt=0, description="SDE noise level a")
    clip_range: float = Field(1e-4, gt=0)
    kl_coef: float = Field(
        0.04,
        ge=0,
        description="KL to the reference policy on the SDE step means: ‖μ_θ − μ_ref‖² / (2·std_t²)",
    )
    adv_clip: float = Field(5.0, gt=0)
    timestep_fraction: float = Field(
        0.99, gt=0, le=1, description="int(fraction·T) of the T rollout timesteps are trained on (at least 1)"
    )
    timestep_draw: Literal["first", "shared"] = Field(
        "first",
        description="first: the first int(fraction·T) timesteps in order (Flow-GRPO); shared: a random subset per "
        "step",
    )
    guidance_scale: float = Field(
        4.5, ge=1.0, description="classifier-free guidance in SDE sampling and in training (1.0 = off)"
    )
    inner_epochs: int = Field(1, ge=1)


class OptimConfig(_Section):
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = Field(1.0, gt=0)
    updates_per_step: int = Field(
        1,
        ge=1,
        description="optimizer steps per RL step; gradients are accumulated over the step's prompt groups on all "
        "ranks, so the count does not depend on the number of GPUs (each rank's groups must divide evenly)",
    )


class AdvantageConfig(_Section):
    std: Literal["global", "group"] = Field(
        "global",
        description="A = (R − group mean) / (std + 1e-4) with the std of all rewards of the step (global, official) "
        "or of the prompt's group",
    )


class EMAConfig(_Section):
    """An exponential moving average of the trained LoRA: what checkpoints export and evaluation samples."""

    enabled: bool = True
    decay: float = Field(0.9, ge=0, lt=1, description="EMA decay (official: 0.9)")
    warmup: bool = Field(
        True,
        description="decay at optimizer step k is min(decay, (1 + k)/(10 + k)), as the official EMA wrapper",
    )
    update_every: int = Field(1, ge=1, description="update the EMA every N optimizer steps")


class RewardConfig(_Section):
    kind: Literal["triton", "critic", "brightness", "redness"] = "triton"
    url: str | None = Field(
        None, description="Triton gRPC endpoint(s), comma separated (default: settings.triton_url)"
    )
    critic_uri: str | None = Field(None, description="in-process critic checkpoint (kind=critic)")
    rubrics: str | None = Field(
        None,
        description="kind=critic: the rubric pack (name, YAML path or URI; default firm-v1). kind=triton: the "
        "service asks with the pack it was exported with; the pack used is recorded in every checkpoint's state.json",
    )
    quality: bool = Field(
        True,
        description="kind=critic, gen: QMA uses the quality axis too (for Triton the exported service decides)",
    )
    retries: int = Field(3, ge=0, description="retries per reward call before the step fails")
    retry_backoff_s: float = Field(1.0, ge=0)
    async_overlap: bool = Field(True, description="score group i while rolling out group i+1")
    max_concurrency: int = Field(2, ge=1, description="async: reward calls in flight at once (groups)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for the reward"
    )
    parse_failure: Literal["skip", "min_reward", "official"] = Field(
        "skip",
        description="what a sample whose reward status is not 'ok' trains on: skip = dropped from its group (FIRM); "
        "min_reward = reward 0; official = the official trainers' value (editing: a failed judgement scores raw 0 in "
        "CME, so an execution failure gives 0; generation: a quality failure gives the instruction term alone, an "
        "instruction failure 0). Every non-ok status counts in reward/parse_failure_rate whatever the policy",
    )
    max_unscored_steps: int = Field(
        3,
        ge=0,
        description="fail the run after this many consecutive steps in which no sample got a parsed reward "
        "(status 'ok'): a critic whose every answer is unparseable has nothing to teach (0 = never fail)",
    )
    warn_parse_failure_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        description="warn when the parse failure rate stays above this for 2 consecutive steps (repeated every "
        "10 steps while it lasts)",
    )
    low_confidence: Literal["keep", "drop", "discount"] = Field(
        "keep",
        description="samples whose reward confidence (RewardBreakdown.confidence.p) is low (firm.rl.confidence): "
        "keep = as is; drop = no reward, no advantage (before the group advantages); discount = advantage × p",
    )
    confidence_threshold: float | None = Field(
        None, ge=0, le=1, description="low confidence: p below this (None: no threshold)"
    )
    confidence_coverage: float | None = Field(
        None,
        gt=0,
        le=1,
        description="low confidence: outside the most confident fraction of each group (0.9: the least confident "
        "10%; ties are never cut, so a constant confidence flags nothing)",
    )


class DataConfig(_Section):
    prompts: str = Field(
        description="prompt file: .txt (one per line) or .jsonl ({prompt|instruction, image})"
    )
    eval_prompts: list[str] = Field(
        default_factory=list,
        description="generation: fixed prompts for the periodic sample grid (editing grids use the first 4 "
        "items of the prompt file, which carry their source images)",
    )
    eval_prompt_file: str | None = Field(
        None,
        description="held-out prompt file (same format as `prompts`) for the before/after evaluation "
        "(`firm.rl.evaluate`); None = data.eval_prompts (generation), else the first items of `prompts`",
    )
    max_prompt_chars: int = Field(1000, ge=1)


class CheckpointConfig(_Section):
    every_steps: int = Field(50, ge=1)
    resume: str = Field("none", description="'auto' (latest under output_uri), 'none', or a checkpoint URI")
    export_merged: bool = Field(False, description="also save a merged full pipeline at the end")


class MonitorConfig(_Section):
    tensorboard: bool = True
    eval_every: int = Field(0, ge=0, description="sample grid of eval_prompts every N steps (0 = never)")


class AuditConfig(_Section):
    """The critic audit and the reward-hacking alarms (`firm.rl.audit`, `firm.rl.alarms`).

    Every `every_steps` steps (and at the end) a held-out FIRM-Bench slice with human scores goes through the run's own
    reward (the same endpoint or critic), logging `audit/mae`, `audit/parse_failure_rate`, `audit/confidence_mean`
    and a rationale gallery. The alarms read the step metrics (and the audits); each threshold None switches its
    alarm off. `alarm: stop` ends the run `stopped_by_alarm` (exit code `firm.rl.alarms.ALARM_EXIT_CODE`) with the
    last good checkpoint published; `warn` logs the alarm and goes on."""

    bench: str | None = Field(
        None,
        description="the audit set: a FIRM-Bench directory or dataset URI (bench.jsonl with human scores, "
        "`firmctl bench build`) of the run's task; None = no audit (the per-step alarms still run)",
    )
    every_steps: int = Field(50, ge=1, description="audit after every N steps (and after the last one)")
    max_items: int = Field(32, ge=1, description="the slice: the first N bench items of the run's task")
    gallery_items: int = Field(8, ge=0, description="audit items shown in each rationale gallery")
    alarm: Literal["warn", "stop"] = Field("warn", description="what a fired alarm does")
    patience: int = Field(
        2, ge=1, description="per-step alarms fire after this many consecutive steps over their threshold"
    )
    window: int = Field(5, ge=2, description="steps over which the reward and sub-score trends are measured")
    mae_rise: float | None = Field(
        0.25,
        gt=0,
        description="alarm when the audit MAE rose by more than this (1-5 score units) over the first audit while "
        "the mean reward rose",
    )
    identity_similarity: float = Field(
        0.97,
        gt=0,
        le=1,
        description="editing: a sample is an identity copy when 1 − mean|edit − source| ≥ this",
    )
    identity_reward: float = Field(
        0.5, description="… and the critic rewarded it at least this much (a copy scored low is no hacking)"
    )
    identity_rate: float | None = Field(
        0.25, ge=0, le=1, description="editing: alarm when rewarded identity copies are above this fraction"
    )
    subscore_drop: float | None = Field(
        0.3,
        gt=0,
        description="alarm when one sub-score fell by more than this (normalised units) over `window` steps while "
        "the reward rose",
    )
    parse_failure_rate: float | None = Field(
        0.5, gt=0, le=1, description="alarm when the step's (or an audit's) parse-failure rate is above this"
    )
    zero_variance_ratio: float | None = Field(
        0.9,
        gt=0,
        le=1,
        description="alarm when more than this fraction of the step's groups have identical rewards (no signal)",
    )


class RLConfig(_Section):
    """A full RL run. `task` is edit (CME reward, Qwen-Image-Edit) or gen (QMA reward, SD3.5)."""

    name: str = "rl"
    task: Task
    algorithm: Literal["nft", "grpo"] = "nft"
    output_uri: str = Field(description="where checkpoints, metrics and the final LoRA go (path or URI)")
    seed: int = 0
    steps: int = Field(600, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda")
    policy: PolicyConfig
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    nft: NFTConfig = Field(default_factory=NFTConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    advantages: AdvantageConfig = Field(default_factory=AdvantageConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    data: DataConfig
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        from firm.rl.policies.registry import family

        want = family(self.policy.kind).task
        if self.task != want:
            raise ValueError(f"policy.kind={self.policy.kind} trains task '{want}', but task='{self.task}'")
        check_run = getattr(self.policy.family_options(), "check_run", None)
        # a family's constraints on the rest of the run (e.g. guidance it does not take)
        if check_run is not None:
            check_run(self)
        if self.sampling.prompts_per_step % self.optim.updates_per_step:
            raise ValueError(
                f"optim.updates_per_step={self.optim.updates_per_step} does not divide "
                f"sampling.prompts_per_step={self.sampling.prompts_per_step}: every update needs whole prompt groups"
            )
        if self.task == "edit" and self.data.eval_prompts:
            raise ValueError(
                "data.eval_prompts is for generation: editing eval grids use the first 4 items of data.prompts "
                "(instruction + source image)"
            )
        return self


def check_world_size(cfg: RLConfig, world: int) -> None:
    """The step's prompts must split evenly over `world` ranks, and each rank's groups over the updates."""
    per_step = cfg.sampling.prompts_per_step
    if per_step % world:
        raise ConfigError(f"sampling.prompts_per_step={per_step} is not divisible by {world} ranks")
    if (per_step // world) % cfg.optim.updates_per_step:
        raise ConfigError(
            f"optim.updates_per_step={cfg.optim.updates_per_step} does not divide the {per_step // world} prompt "
            f"groups each of {world} ranks rolls out (sampling.prompts_per_step={per_step})"
        )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML) in place, rejecting keys `RLConfig` does not have."""
    return _apply_overrides(data, overrides, RLConfig)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RLConfig:
    """Read a recipe YAML, apply overrides, validate. Errors name the file and the offending key."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file does not exist")
    from firm.overrides import read_yaml_mapping

    data = read_yaml_mapping(p)
    return config_from_dict(apply_overrides(data, overrides or []), source=str(p), overrides=overrides)


def config_from_dict(
    data: dict[str, Any], source: str = "config", overrides: list[str] | None = None
) -> RLConfig:
    """Validate; an error names the override that caused it when there is one, else `source`."""
    try:
        return RLConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise ConfigError(f"{blame(loc, overrides, source)}: {loc}: {first.get('msg')}") from exc
