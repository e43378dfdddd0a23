"""The tensor contract of FIRM's Triton models — one place shared by export, the backends, the client and tests.

Every model batches (`max_batch_size > 0`, batch dimension first), so a tensor declared with `dims: [1]` travels as
shape `[batch, 1]`. Strings are Triton `BYTES` (`TYPE_STRING` in config.pbtxt): images are encoded PNG/JPEG bytes,
text is UTF-8. Scores that did not parse come back as NaN with a `status` saying which axis failed — never 0.

`confidence` (every model, added after the first release: older clients that do not request it are unaffected)
is `[p, entropy, std]` of `firm.schemas.Confidence` — the critic's probability of the score it wrote, the entropy
(nats) and std of its digit distribution; for the reward models the joint over the axes entering the reward
(`firm.rewards.confidence`) — all NaN where there is none (the answer did not parse, or the engine cannot see
the digit's probabilities). The `breakdown` JSON leaves it out, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

CRITIC_MODEL = "firm_critic"
CONFIDENCE_OUTPUT = "confidence"  # [p, entropy, std]; see the module docstring
# python engine: the one model that holds the critic; the three above are ensembles
ENGINE_MODEL = "firm_engine"
EDIT_REWARD_MODEL = "firm_edit_reward"
GEN_REWARD_MODEL = "firm_gen_reward"
REWARD_MODEL_FOR_TASK = {"edit": EDIT_REWARD_MODEL, "gen": GEN_REWARD_MODEL}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # the KServe-v2 / tritonclient name: "BYTES", "FP32"
    dims: tuple[int, ...] = (1,)
    optional: bool = False

    @property
    def config_dtype(self) -> str:
        """The name used in config.pbtxt."""
        return "TYPE_STRING" if self.dtype == "BYTES" else f"TYPE_{self.dtype}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)


B = "BYTES"
F = "FP32"

CRITIC = ModelSpec(
    CRITIC_MODEL,
    inputs=(
        # One row = one judgement: the rubric's images (edit: source then edited; gen: one), its id, its text field.
        TensorSpec("images", B, (-1,)),
        TensorSpec("rubric_id", B),
        TensorSpec("text", B),
    ),
    outputs=(
        # Sub-scores 1..5: single-score rubrics fill index 0 (others NaN); quality fills all three. NaN = no score.
        TensorSpec("score", F, (3,)),
        TensorSpec("expected_score", F),
        TensorSpec("status", B),
        TensorSpec("reasoning", B),
        TensorSpec("raw_text", B),
        TensorSpec("confidence", F, (3,)),  # [p, entropy, std] of the judgement; NaN = none
    ),
)

EDIT_REWARD = ModelSpec(
    EDIT_REWARD_MODEL,
    inputs=(TensorSpec("source_image", B), TensorSpec("edited_image", B), TensorSpec("instruction", B)),
    outputs=(
        TensorSpec("reward", F),  # NaN when a needed axis did not parse (policy skip): the sample is dropped
        TensorSpec("execution", F),  # raw 1..5 (or the expected score with readout=expected), NaN if unparsed
        TensorSpec("consistency", F),
        TensorSpec("status", B),  # "ok" or e.g. "unparseable:execution"
        TensorSpec("reasoning", B),  # JSON {"execution": "...", "consistency": "..."}
        TensorSpec("breakdown", B),  # JSON of firm.schemas.RewardBreakdown (what RewardClient returns)
        # [p, entropy, std] of the reward (RewardBreakdown.confidence); NaN = none
        TensorSpec("confidence", F, (3,)),
    ),
)

GEN_REWARD = ModelSpec(
    GEN_REWARD_MODEL,
    inputs=(TensorSpec("image", B), TensorSpec("prompt", B)),
    outputs=(
        TensorSpec("reward", F),
        TensorSpec("instruction", F),  # raw 1..5, NaN if unparsed
        TensorSpec("quality", F, (3,)),  # raw (aesthetics, technical, structure), NaN if unparsed/unscored
        TensorSpec("status", B),
        TensorSpec("reasoning", B),
        TensorSpec("breakdown", B),
        TensorSpec("confidence", F, (3,)),
    ),
)

SPECS: dict[str, ModelSpec] = {s.name: s for s in (CRITIC, EDIT_REWARD, GEN_REWARD)}


def engine_output_name(name: str) -> str:
    """The engine's name for a public output: the same, except where an input of another model has that name
    (firm_gen_reward's `instruction` score vs firm_edit_reward's `instruction` text)."""
    clash = any(t.name == name for spec in SPECS.values() for t in spec.inputs)
    return f"{name}_score" if clash else name


def _engine_spec() -> ModelSpec:
    """`firm_engine`: every public model's inputs (all optional: a request carries one model's set) and the union
    of their outputs (a response carries the requested ones). Tensors of the same name agree on type and dims."""
    inputs: dict[str, TensorSpec] = {}
    outputs: dict[str, TensorSpec] = {}
    for spec in SPECS.values():
        for t in spec.inputs:
            inputs[t.name] = TensorSpec(t.name, t.dtype, t.dims, optional=True)
        for t in spec.outputs:
            e = TensorSpec(engine_output_name(t.name), t.dtype, t.dims)
            if e.name in outputs and outputs[e.name] != e:
                # a contract bug, caught at import
                raise AssertionError(f"output {t.name} differs between models")
            outputs[e.name] = e
    return ModelSpec(ENGINE_MODEL, inputs=tuple(inputs.values()), outputs=tuple(outputs.values()))


ENGINE = _engine_spec()
