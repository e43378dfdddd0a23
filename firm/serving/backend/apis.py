"""The three public models' request handling, independent of where the critic runs.

Each handler turns one Triton request into rows (validating every input: one bad image fails only its own
request), the rows into `CriticRequest`s, the critic's judgements back into results, and results into output
tensors:

- `CriticApi` (`firm_critic`): one judgement per row — the rubric's images, its id (`task.axis`, optionally
  `.student` and the pack's name, e.g. `edit.execution.student.firm-v1`) and its text field (the instruction for
  edits, the prompt for gen/instruction, ignored for quality) → score, expected score, status, reasoning, raw answer,
  confidence;
- `EditRewardApi` (`firm_edit_reward`): source, edited, instruction → both axes, then CME/… → reward, execution,
  consistency, status, reasoning, breakdown, confidence;
- `GenRewardApi` (`firm_gen_reward`): image, prompt → instruction (+ quality), then QMA → reward, instruction,
  quality, status, reasoning, breakdown, confidence.

`confidence` is `[p, entropy, std]` (`firm.serving.spec`), NaN where absent; the `breakdown` JSON leaves the
confidence out, as it was before the tensor existed, so older clients keep validating it.

`serve_requests` runs a merged batch of requests for any mix of these APIs through ONE critic call. The python
engine (`firm_engine`) serves all three with the in-process critic; on the vLLM engine each reward model serves its
own API and the judge is `VllmCritic.judge`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from firm.errors import InputError
from firm.rewards.confidence import confidence_vector
from firm.schemas import Judgement, RewardBreakdown
from firm.serving.backend.common import (
    ModelParams,
    bytes_col,
    decode_image,
    decode_text,
    f32,
    rows_of,
)
from firm.serving.spec import CRITIC, EDIT_REWARD, GEN_REWARD, ModelSpec

Judge = Callable[[list[Any]], list[Judgement]]


class Api:
    """One public model's handling. `out_names` renames output tensors (the engine's own names)."""

    spec: ModelSpec

    def __init__(
        self,
        pb: Any,
        params: ModelParams,
        *,
        pack: Any,
        max_decode_pixels: int,
        metrics: Any,
        out_names: dict[str, str] | None = None,
        keep_decoded: bool = False,
    ) -> None:
        self.pb = pb
        self.params = params
        self.pack = pack
        self.max_decode_pixels = max_decode_pixels
        self.metrics = metrics
        self.out_names = out_names or {}
        # a remote critic that renders prompts here needs the decoded image; the in-process one takes the bytes
        self.keep_decoded = keep_decoded
        self.setup()

    @property
    def name(self) -> str:
        return self.spec.name

    def setup(self) -> None:
        """Read API-specific config parameters."""

    def carries(self, request: Any) -> bool:
        """Whether `request` is for this API (it carries this API's first input)."""
        return self.pb.get_input_tensor_by_name(request, self.spec.inputs[0].name) is not None

    def _input(self, request: Any, name: str, cols: int | None = 1) -> Any:
        t = self.pb.get_input_tensor_by_name(request, name)
        return rows_of(name, None if t is None else t.as_numpy(), cols)

    def _image(self, value: Any, what: str) -> Any:
        img = decode_image(value, what, self.max_decode_pixels)  # validated here, whatever is kept
        return img if self.keep_decoded else bytes(value)

    def _tensor(self, name: str, value: Any) -> Any:
        return self.pb.Tensor(self.out_names.get(name, name), value)

    # the four steps
    def decode(self, request: Any) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def critic_requests(self, rows: list[Any]) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def finish(self, rows: list[Any], js: list[Judgement]) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def encode(self, results: list[Any]) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError


class CriticApi(Api):
    spec = CRITIC

    def decode(self, request: Any) -> list[Any]:
        from firm.critic.critic import CriticRequest

        images = self._input(request, "images", cols=None)
        rubric_ids = self._input(request, "rubric_id")
        texts = self._input(request, "text")
        if not (images.shape[0] == rubric_ids.shape[0] == texts.shape[0]):
            raise InputError("inputs images, rubric_id and text disagree on batch size")
        out = []
        for r in range(images.shape[0]):
            rubric = self.pack.by_id(decode_text(rubric_ids[r, 0], f"rubric_id[{r}]"))
            if rubric.role != "student":
                raise InputError(
                    f"rubric_id[{r}]: {rubric.id} is a teacher rubric; the critic serves student rubrics"
                )
            if images.shape[1] != rubric.n_images:
                raise InputError(
                    f"rubric {rubric.id} needs {rubric.n_images} image(s) per row, got {images.shape[1]}"
                )
            imgs = [self._image(images[r, j], f"images[{r}][{j}]") for j in range(images.shape[1])]
            text = decode_text(texts[r, 0], f"text[{r}]", allow_empty=rubric.axis == "quality")
            field = "instruction" if rubric.task == "edit" else "prompt"
            out.append(
                CriticRequest(task=rubric.task, axis=rubric.axis, images=imgs, **{field: text or None})
            )
        return out

    def critic_requests(self, rows: list[Any]) -> list[Any]:
        return rows

    def finish(self, rows: list[Any], js: list[Judgement]) -> list[Judgement]:
        for j in js:
            self.metrics.judged(j.axis, j.status)
        return js

    def encode(self, js: list[Judgement]) -> list[Any]:
        scores = [
            j.score if isinstance(j.score, list) else (None if j.score is None else [j.score]) for j in js
        ]
        return [
            self._tensor("score", f32(scores, cols=3)),
            self._tensor("expected_score", f32([j.expected_score for j in js])),
            self._tensor("status", bytes_col([j.status for j in js])),
            self._tensor("reasoning", bytes_col([j.reasoning for j in js])),
            self._tensor("raw_text", bytes_col([j.raw_text for j in js])),
            self._tensor("confidence", _confidences([j.confidence for j in js])),
        ]


def _confidences(cs: list[Any]) -> Any:
    """The `confidence` tensor: one `[p, entropy, std]` row per judgement / reward, NaN where there is none."""
    import numpy as np

    return np.array([confidence_vector(c) for c in cs], dtype=np.float32).reshape(len(cs), 3)


def _raw_single(v: Any) -> float | None:
    if v is None or isinstance(v, list):  # a list is not expected for execution/consistency/instruction
        return None
    return float(v)


class _RewardApi(Api):
    """Parse-failure policy, metrics per breakdown, the common output tensors."""

    @property
    def policy(self) -> str:
        return self.params.get("policy", "skip")

    def _observe(self, b: RewardBreakdown) -> None:
        for axis, _raw in b.raw_scores.items():
            failed = [s.split(":")[0] for s in b.status.split(",") if s.endswith(f":{axis}")]
            self.metrics.judged(axis, failed[0] if failed else "ok")
        self.metrics.reward(b.reward)

    def _common(self, bs: list[RewardBreakdown]) -> list[Any]:
        return [
            self._tensor("status", bytes_col([b.status for b in bs])),
            self._tensor("reasoning", bytes_col([json.dumps(b.reasoning) for b in bs])),
            self._tensor("breakdown", bytes_col([b.model_dump_json(exclude={"confidence"}) for b in bs])),
            self._tensor("confidence", _confidences([b.confidence for b in bs])),
        ]


class EditRewardApi(_RewardApi):
    spec = EDIT_REWARD

    def setup(self) -> None:
        from firm.rewards.formulas import EditRewardConfig

        p = self.params
        kw: dict[str, Any] = {
            "formulation": p.get("formulation", "cme"),
            "w_base": p.get_float("w_base", 0.6),
            "w_bonus": p.get_float("w_bonus", 0.4),
            "readout": p.get("readout", "text"),
        }
        if "guard_threshold" in p.raw:
            kw["guard_threshold"] = p.get_float("guard_threshold", 2.0)
        self.config = EditRewardConfig(**kw)

    def decode(self, request: Any) -> list[Any]:
        from firm.critic.critic import EditInput

        src = self._input(request, "source_image")
        edi = self._input(request, "edited_image")
        ins = self._input(request, "instruction")
        if not (src.shape[0] == edi.shape[0] == ins.shape[0]):
            raise InputError(
                f"inputs disagree on batch size: source_image {src.shape[0]}, edited_image {edi.shape[0]}, "
                f"instruction {ins.shape[0]}"
            )
        return [
            EditInput(
                source=self._image(src[r, 0], f"source_image[{r}]"),
                edited=self._image(edi[r, 0], f"edited_image[{r}]"),
                instruction=decode_text(ins[r, 0], f"instruction[{r}]"),
            )
            for r in range(src.shape[0])
        ]

    def critic_requests(self, rows: list[Any]) -> list[Any]:
        from firm.critic.critic import CriticRequest

        return [
            CriticRequest(task="edit", axis=axis, images=[e.source, e.edited], instruction=e.instruction)
            for e in rows
            for axis in ("execution", "consistency")
        ]

    def finish(self, rows: list[Any], js: list[Judgement]) -> list[RewardBreakdown]:
        from firm.rewards.formulas import edit_reward

        out = [edit_reward(js[2 * i], js[2 * i + 1], self.config, self.policy) for i in range(len(rows))]
        for b in out:
            self._observe(b)
        return out

    def encode(self, bs: list[RewardBreakdown]) -> list[Any]:
        return [
            self._tensor("reward", f32([b.reward for b in bs])),
            self._tensor("execution", f32([_raw_single(b.raw_scores.get("execution")) for b in bs])),
            self._tensor("consistency", f32([_raw_single(b.raw_scores.get("consistency")) for b in bs])),
            *self._common(bs),
        ]


class GenRewardApi(_RewardApi):
    spec = GEN_REWARD

    def setup(self) -> None:
        from firm.rewards.formulas import GenRewardConfig

        p = self.params
        self.quality = p.get_bool("quality", True)
        # firm_engine serves both rewards, so its generation weights are prefixed gen_
        pre = "gen_" if "gen_w_base" in p.raw else ""
        self.config = GenRewardConfig(
            w_base=p.get_float(f"{pre}w_base", 0.4),
            w_bonus=p.get_float(f"{pre}w_bonus", 0.6),
            readout=p.get("readout", "text"),
        )

    def decode(self, request: Any) -> list[Any]:
        from firm.critic.critic import GenInput

        img = self._input(request, "image")
        prm = self._input(request, "prompt")
        if img.shape[0] != prm.shape[0]:
            raise InputError(f"inputs disagree on batch size: image {img.shape[0]}, prompt {prm.shape[0]}")
        return [
            GenInput(
                image=self._image(img[r, 0], f"image[{r}]"), prompt=decode_text(prm[r, 0], f"prompt[{r}]")
            )
            for r in range(img.shape[0])
        ]

    @property
    def axes(self) -> tuple[str, ...]:
        return ("instruction", "quality") if self.quality else ("instruction",)

    def critic_requests(self, rows: list[Any]) -> list[Any]:
        from firm.critic.critic import CriticRequest

        return [
            CriticRequest(task="gen", axis=a, images=[g.image], prompt=g.prompt)
            for g in rows
            for a in self.axes
        ]

    def finish(self, rows: list[Any], js: list[Judgement]) -> list[RewardBreakdown]:
        from firm.rewards.formulas import gen_reward

        k = len(self.axes)
        out = [
            gen_reward(js[k * i], js[k * i + 1] if self.quality else None, self.config, self.policy)
            for i in range(len(rows))
        ]
        for b in out:
            self._observe(b)
        return out

    def encode(self, bs: list[RewardBreakdown]) -> list[Any]:
        quality = []
        for b in bs:
            q = b.raw_scores.get("quality")
            quality.append(q if isinstance(q, list) else (None if q is None or math.isnan(float(q)) else [q]))
        return [
            self._tensor("reward", f32([b.reward for b in bs])),
            self._tensor("instruction", f32([_raw_single(b.raw_scores.get("instruction")) for b in bs])),
            self._tensor("quality", f32(quality, cols=3)),
            *self._common(bs),
        ]


def serve_requests(pb: Any, requests: Sequence[Any], apis: Sequence[Api], judge: Judge) -> list[Any]:
    """One response per request, in order. Each request is decoded by the API it carries (an `InputError` → that
    request's INVALID_ARGUMENT); the critic rows of every valid request are judged in ONE call; an `InputError`
    from that call (e.g. an image the processor refuses) fails only the requests it comes from."""
    invalid = pb.TritonError.INVALID_ARG
    responses: list[Any] = [None] * len(requests)
    plan: list[tuple[int, Api, list[Any], list[Any]]] = []
    for i, request in enumerate(requests):
        api = next((a for a in apis if a.carries(request)), None)
        try:
            if api is None:
                names = ", ".join(f"{a.name} ({a.spec.inputs[0].name}, …)" for a in apis)
                raise InputError(f"the request carries the inputs of none of: {names}")
            rows = api.decode(request)
            plan.append((i, api, rows, api.critic_requests(rows)))
        except InputError as exc:
            if api is not None:
                api.metrics.invalid()
            responses[i] = pb.InferenceResponse(error=pb.TritonError(str(exc), invalid))
    flat = [r for *_, reqs in plan for r in reqs]
    if not flat:
        return responses
    try:
        judgements = judge(flat)
    except InputError as exc:
        if len(plan) == 1:
            responses[plan[0][0]] = pb.InferenceResponse(error=pb.TritonError(str(exc), invalid))
            return responses
        for i, api, rows, reqs in plan:  # one request at a time, so the bad one fails alone
            try:
                js = judge(reqs)
            except InputError as one:
                responses[i] = pb.InferenceResponse(error=pb.TritonError(str(one), invalid))
                continue
            responses[i] = pb.InferenceResponse(output_tensors=api.encode(api.finish(rows, js)))
        return responses
    at = 0
    for i, api, rows, reqs in plan:
        js = judgements[at : at + len(reqs)]
        at += len(reqs)
        responses[i] = pb.InferenceResponse(output_tensors=api.encode(api.finish(rows, js)))
    return responses
