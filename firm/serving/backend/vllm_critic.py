"""The reward models' critic when `firm_critic` is a Triton vLLM-backend model (`firmctl serve export --engine vllm`).

It judges the reward models' rubric requests (`firm.serving.backend.apis`) like the in-process critic, but instead
of running `generate` itself it renders the same chat prompt (`firm.critic.messages`: the rubric pack's layout and
codec, the critic's own processor and chat template), sends it with the base64 images to `firm_critic` through BLS
(the vLLM backend is decoupled and batches continuously; the answer budget is the pack's per axis) and parses the
answer with `firm.rewards.parsing`; the formulas are applied by the caller. Only the `text` readout is available
this way. It needs the NGC vLLM Triton image and a GPU, so it is not exercised on CPU CI;
`render_request` (the part that decides what vLLM sees) is tested directly.

Confidence: each request asks vLLM for the top-`TOP_LOGPROBS` log-probabilities of every generated token
(`return_logprobs`, the backend's `logprobs` output: per token `{token id: {logprob, rank, decoded_token}}`);
`digit_dists_from_logprobs` finds the token that wrote each score digit (the parser's character spans, matched
against the greedy tokens' decoded text) and renormalises the five digits' probabilities there (a digit outside
the top k counts as 0). Where the digit cannot be located, or the backend returns no logprobs (older images),
the judgement has no confidence.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from firm.errors import ConfigError
from firm.rewards.confidence import digit_probs_from_logprobs, judgement_confidence
from firm.schemas import Judgement

CRITIC_MODEL = "firm_critic"
TOP_LOGPROBS = 20  # enough for the five digits at a score position in practice; vLLM's default cap is 20


def _b64_png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue())


def render_request(
    processor: Any, req: Any, max_pixels: int | None = None, pack: Any = None
) -> tuple[str, list[bytes]]:
    """(prompt text, base64 PNG images in placeholder order) for one `CriticRequest`, laid out by the pack's
    rubric exactly as the in-process critic lays it out (codec, pixel bounds, message layout)."""
    from firm.critic.critic import rubric_pixel_rule
    from firm.critic.messages import build_messages, encode_images, message_images, render_prompt
    from firm.rubric_store import load_pack

    rubric = load_pack(pack).get(req.task, req.axis, "student")
    rule = rubric_pixel_rule(processor, rubric, max_pixels)
    images = [rule.fit(im) for im in encode_images(rubric, req.images)]
    messages = build_messages(rubric, images, **req.fields())
    return render_prompt(processor, messages), [_b64_png(im) for im in message_images(messages)]


def digit_dists_from_logprobs(
    steps: Sequence[dict[Any, Any]], text: str, spans: Sequence[tuple[int, int]], digit_ids: Sequence[int]
) -> list[list[float]] | None:
    """The digit distribution at each score span of `text` from vLLM's per-token top-k logprobs (`steps`: one
    `{token id: {"logprob", "rank", "decoded_token"}}` per generated token; the greedy token is the one of rank 1),
    or None when a span is not exactly one digit token whose decoded prefix matches `text`."""
    chosen: list[tuple[int, str]] = []
    tops: list[dict[int, float]] = []
    for step in steps:
        entries = {int(k): v for k, v in step.items()}
        if not entries:
            return None
        tid = min(entries, key=lambda k: entries[k].get("rank") or 1 << 30)
        chosen.append((tid, entries[tid].get("decoded_token") or ""))
        tops.append({k: float(v["logprob"]) for k, v in entries.items()})
    starts, at = [], 0
    for _, piece in chosen:
        starts.append(at)
        at += len(piece)
    decoded = "".join(piece for _, piece in chosen)
    digits = set(digit_ids)
    dists = []
    for start, end in spans:
        if end - start != 1 or decoded[:start] != text[:start]:
            return None
        t = next((i for i, s0 in enumerate(starts) if s0 == start), None)
        if t is None or chosen[t][0] not in digits or chosen[t][1] != text[start:end]:
            return None
        probs = digit_probs_from_logprobs(tops[t], digit_ids)
        if probs is None:
            return None
        dists.append(probs)
    return dists or None


class VllmCritic:
    """Critic facade over BLS calls to a vLLM-backend `firm_critic`."""

    def __init__(
        self, location: str, *, max_pixels: int | None, max_new_tokens: int | None, rubrics: Any = None
    ) -> None:
        from transformers import AutoConfig

        from firm.critic.critic import load_processor, resolve_model_source
        from firm.rubric_store import load_pack

        path = resolve_model_source(location)
        self.processor = load_processor(path, AutoConfig.from_pretrained(path).model_type)
        self.max_pixels = max_pixels
        self.max_new_tokens = max_new_tokens
        self.pack = load_pack(rubrics)
        tok = self.processor.tokenizer
        self.digit_ids = [tok.encode(d, add_special_tokens=False)[0] for d in "12345"]

    def _budget(self, req: Any) -> int:
        return self.max_new_tokens or self.pack.get(req.task, req.axis).generation.max_new_tokens

    def _generate(self, prompt: str, images: list[bytes], max_tokens: int) -> Any:
        import triton_python_backend_utils as pb_utils

        sampling = json.dumps({"temperature": 0.0, "max_tokens": max_tokens, "logprobs": TOP_LOGPROBS})
        inputs = [
            pb_utils.Tensor("text_input", np.array([prompt.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("image", np.array(images, dtype=np.object_)),
            pb_utils.Tensor("sampling_parameters", np.array([sampling.encode()], dtype=np.object_)),
            pb_utils.Tensor("exclude_input_in_output", np.array([True], dtype=bool)),
            pb_utils.Tensor("stream", np.array([False], dtype=bool)),
            pb_utils.Tensor("return_logprobs", np.array([True], dtype=bool)),
        ]
        request = pb_utils.InferenceRequest(
            model_name=CRITIC_MODEL, inputs=inputs, requested_output_names=["text_output", "logprobs"]
        )
        return request.async_exec(decoupled=True)

    async def _one(self, req: Any) -> Judgement:
        import triton_python_backend_utils as pb_utils

        from firm.rewards.parsing import parse_answer

        prompt, images = render_request(self.processor, req, self.max_pixels, self.pack)
        budget = self._budget(req)
        text = ""
        steps: list[dict[Any, Any]] | None = []
        async for resp in await self._generate(prompt, images, budget):
            if resp.has_error():
                raise RuntimeError(f"{CRITIC_MODEL}: {resp.error().message()}")
            out = pb_utils.get_output_tensor_by_name(resp, "text_output")
            if out is not None:
                text += b"".join(bytes(x) for x in out.as_numpy().reshape(-1)).decode("utf-8", "replace")
            lp = pb_utils.get_output_tensor_by_name(resp, "logprobs")
            chunk = json.loads(bytes(lp.as_numpy().reshape(-1)[0])) if lp is not None else None
            if steps is not None and isinstance(chunk, list):
                steps.extend(chunk)
            else:
                steps = None  # no logprobs from this backend: no confidence
        parsed = parse_answer(self.pack.get(req.task, req.axis).answer_format, text)
        # the engine returns text only: an unparsed answer as long as the budget was cut off there
        if (
            not parsed.ok
            and len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) >= budget
        ):
            parsed = parsed.model_copy(update={"status": "truncated"})
        confidence = None
        if parsed.ok and parsed.score is not None and steps:
            dists = digit_dists_from_logprobs(steps, text, parsed.score_spans, self.digit_ids)
            if dists is not None:
                with contextlib.suppress(ValueError):  # as many distributions as sub-scores, else none
                    confidence = judgement_confidence(dists, parsed.score)
        return Judgement(
            task=req.task,
            axis=req.axis,
            status=parsed.status,
            score=parsed.score if parsed.ok else None,
            confidence=confidence,
            reasoning=parsed.reasoning,
            raw_text=text,
            parsed_from=parsed.parsed_from,
            sample_id=req.sample_id,
        )

    def judge(self, requests: Sequence[Any], readout: str = "text", batch_size: int = 0) -> list[Judgement]:
        import asyncio

        if readout != "text":
            raise ConfigError("the vLLM engine serves the 'text' readout only")

        async def run() -> list[Judgement]:
            return list(await asyncio.gather(*(self._one(r) for r in requests)))

        return asyncio.run(run())
