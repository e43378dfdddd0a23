"""The reward models' critic when `firm_critic` is a Triton vLLM-backend model (`firmctl serve export --engine vllm`).

It judges the reward models' rubric requests (`firm.serving.backend.apis`) like the in-process critic, but instead
of running `generate` itself it renders the same chat prompt (`firm.critic.messages`: the rubric pack's layout and
codec, the critic's own processor and chat template), sends it with the base64 images to `firm_critic` through BLS
(the vLLM backend is decoupled and batches continuously; the answer budget is the pack's per axis) and parses the
answer with `firm.rewards.parsing`; the formulas are applied by the caller. Only the `text` readout is available
this way. It needs the NGC vLLM Triton image and a GPU, so it is not exercised on CPU CI;
`render_request` (the part that decides what vLLM sees) is tested directly.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from firm.errors import ConfigError
from firm.schemas import Judgement

CRITIC_MODEL = "firm_critic"


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

    def _budget(self, req: Any) -> int:
        return self.max_new_tokens or self.pack.get(req.task, req.axis).generation.max_new_tokens

    def _generate(self, prompt: str, images: list[bytes], max_tokens: int) -> Any:
        import triton_python_backend_utils as pb_utils

        sampling = json.dumps({"temperature": 0.0, "max_tokens": max_tokens})
        inputs = [
            pb_utils.Tensor("text_input", np.array([prompt.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("image", np.array(images, dtype=np.object_)),
            pb_utils.Tensor("sampling_parameters", np.array([sampling.encode()], dtype=np.object_)),
            pb_utils.Tensor("exclude_input_in_output", np.array([True], dtype=bool)),
            pb_utils.Tensor("stream", np.array([False], dtype=bool)),
        ]
        request = pb_utils.InferenceRequest(
            model_name=CRITIC_MODEL, inputs=inputs, requested_output_names=["text_output"]
        )
        return request.async_exec(decoupled=True)

    async def _one(self, req: Any) -> Judgement:
        import triton_python_backend_utils as pb_utils

        from firm.rewards.parsing import parse_answer

        prompt, images = render_request(self.processor, req, self.max_pixels, self.pack)
        budget = self._budget(req)
        text = ""
        async for resp in await self._generate(prompt, images, budget):
            if resp.has_error():
                raise RuntimeError(f"{CRITIC_MODEL}: {resp.error().message()}")
            out = pb_utils.get_output_tensor_by_name(resp, "text_output")
            if out is not None:
                text += b"".join(bytes(x) for x in out.as_numpy().reshape(-1)).decode("utf-8", "replace")
        parsed = parse_answer(self.pack.get(req.task, req.axis).answer_format, text)
        # the engine returns text only: an unparsed answer as long as the budget was cut off there
        if (
            not parsed.ok
            and len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) >= budget
        ):
            parsed = parsed.model_copy(update={"status": "truncated"})
        return Judgement(
            task=req.task,
            axis=req.axis,
            status=parsed.status,
            score=parsed.score if parsed.ok else None,
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
