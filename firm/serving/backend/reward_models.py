"""`firm_edit_reward` and `firm_gen_reward`: Base-and-Bonus rewards computed on the server.

The reward models hold no critic: each merged batch of N requests becomes ONE call to `firm_critic` of the same
server (BLS; 2N rubric rows for edits, both axes), then CME/QMA. So a server holds one copy of the critic's weights
whatever models it serves — with an 8B critic, three in-process copies would not fit one GPU. On the vLLM engine
the same calls go to the vLLM-backend `firm_critic` (`firm.serving.backend.vllm_critic`). The images are validated
here (one bad image fails only its request) and forwarded as the bytes the client sent.
"""

from __future__ import annotations

import json
import math
from typing import Any

from firm.errors import InputError
from firm.schemas import RewardBreakdown
from firm.serving.backend.common import bytes_col, decode_image, decode_text, f32
from firm.serving.backend.critic_runtime import CriticBackedModel


def _raw_single(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, list):  # not expected for execution/consistency/instruction
        return None
    return float(v)


class _RewardModel(CriticBackedModel):
    """Shared by the two reward models: parse-failure policy, metrics per breakdown, common output tensors."""

    remote = True

    def _image(self, value: Any, what: str) -> Any:
        """Validate an encoded image here (decodable, within the pixel budget, a judgeable aspect ratio) and keep
        the client's bytes for firm_critic; the vLLM engine renders prompts here, so it keeps the decoded image."""
        img = decode_image(value, what, self.max_decode_pixels)
        return img if self.params.get("engine", "python") == "vllm" else bytes(value)

    @property
    def policy(self) -> str:
        return self.params.get("policy", "skip")

    def _observe(self, b: RewardBreakdown) -> None:
        for axis, _raw in b.raw_scores.items():
            failed = [s.split(":")[0] for s in b.status.split(",") if s.endswith(f":{axis}")]
            self.metrics.judged(axis, failed[0] if failed else "ok")
        self.metrics.reward(b.reward)

    @staticmethod
    def _common(bs: list[RewardBreakdown]) -> list[Any]:
        return [
            f32([b.reward for b in bs]),
            bytes_col([b.status for b in bs]),
            bytes_col([json.dumps(b.reasoning) for b in bs]),
            bytes_col([b.model_dump_json() for b in bs]),
        ]


class EditRewardModel(_RewardModel):
    """Inputs source_image, edited_image, instruction → reward (CME by default), execution, consistency, …"""

    name = "firm_edit_reward"

    def _setup(self) -> None:
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

    def _decode(self, request: Any) -> list[Any]:
        from firm.critic.critic import EditInput

        src = self._input(request, "source_image")
        edi = self._input(request, "edited_image")
        ins = self._input(request, "instruction")
        if not (src.shape[0] == edi.shape[0] == ins.shape[0]):
            raise InputError(
                f"inputs disagree on batch size: source_image {src.shape[0]}, edited_image {edi.shape[0]}, "
                f"instruction {ins.shape[0]}"
            )
        out = []
        for r in range(src.shape[0]):
            out.append(
                EditInput(
                    source=self._image(src[r, 0], f"source_image[{r}]"),
                    edited=self._image(edi[r, 0], f"edited_image[{r}]"),
                    instruction=decode_text(ins[r, 0], f"instruction[{r}]"),
                )
            )
        return out

    def _score(self, items: list[Any]) -> list[RewardBreakdown]:
        # One generate over both axes of every edit in the merged batch.
        scored = self.critic.edit_rewards(items, self.config, self.policy, batch_size=2 * len(items))
        out = [b for b, _ in scored]
        for b in out:
            self._observe(b)
        return out

    def _encode(self, bs: list[RewardBreakdown]) -> list[Any]:
        pb = self.pb
        reward, status, reasoning, breakdown = self._common(bs)
        return [
            pb.Tensor("reward", reward),
            pb.Tensor("execution", f32([_raw_single(b.raw_scores.get("execution")) for b in bs])),
            pb.Tensor("consistency", f32([_raw_single(b.raw_scores.get("consistency")) for b in bs])),
            pb.Tensor("status", status),
            pb.Tensor("reasoning", reasoning),
            pb.Tensor("breakdown", breakdown),
        ]


class GenRewardModel(_RewardModel):
    """Inputs image, prompt → reward (QMA; instruction only when exported with quality off), instruction, quality."""

    name = "firm_gen_reward"

    def _setup(self) -> None:
        from firm.rewards.formulas import GenRewardConfig

        p = self.params
        self.quality = p.get_bool("quality", True)
        self.config = GenRewardConfig(
            w_base=p.get_float("w_base", 0.4),
            w_bonus=p.get_float("w_bonus", 0.6),
            readout=p.get("readout", "text"),
        )

    def _decode(self, request: Any) -> list[Any]:
        from firm.critic.critic import GenInput

        img = self._input(request, "image")
        prm = self._input(request, "prompt")
        if img.shape[0] != prm.shape[0]:
            raise InputError(f"inputs disagree on batch size: image {img.shape[0]}, prompt {prm.shape[0]}")
        return [
            GenInput(
                image=self._image(img[r, 0], f"image[{r}]"),
                prompt=decode_text(prm[r, 0], f"prompt[{r}]"),
            )
            for r in range(img.shape[0])
        ]

    def _score(self, items: list[Any]) -> list[RewardBreakdown]:
        k = 2 if self.quality else 1
        scored = self.critic.gen_rewards(
            items, self.quality, self.config, self.policy, batch_size=k * len(items)
        )
        out = [b for b, _ in scored]
        for b in out:
            self._observe(b)
        return out

    def _encode(self, bs: list[RewardBreakdown]) -> list[Any]:
        pb = self.pb
        reward, status, reasoning, breakdown = self._common(bs)
        quality = []
        for b in bs:
            q = b.raw_scores.get("quality")
            quality.append(q if isinstance(q, list) else (None if q is None or math.isnan(float(q)) else [q]))
        return [
            pb.Tensor("reward", reward),
            pb.Tensor("instruction", f32([_raw_single(b.raw_scores.get("instruction")) for b in bs])),
            pb.Tensor("quality", f32(quality, cols=3)),
            pb.Tensor("status", status),
            pb.Tensor("reasoning", reasoning),
            pb.Tensor("breakdown", breakdown),
        ]
