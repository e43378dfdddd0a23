"""Rewards for RL through one interface: a `RewardFunction` maps rollout items to `RewardBreakdown`s.

Implementations: `TritonReward` (the reward service through `firm.serving.RewardClient`, the default),
`InProcessCriticReward` (a `firm.critic.Critic` in this process: tests and small runs), and cheap known rewards
(`BrightnessReward`, `RednessReward`) whose optimum is obvious, for learning tests. Whether a reward counts is decided
from its `status` (`is_scored`: "ok" and a finite value); what a failed sample trains on is the trainer's
`reward.parse_failure` policy (`firm.rl.failures`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from firm.errors import ConfigError, FirmError, InputError
from firm.schemas import RewardBreakdown, Task

log = logging.getLogger(__name__)


class RewardServiceError(FirmError):
    """The reward service failed for a whole batch after all retries: the step must not train on it."""


@dataclass
class RewardItem:
    """One rollout to score. `image` is [3, H, W] in [0, 1]; `source` the pre-edit image (editing)."""

    task: Task
    prompt: str  # generation prompt or edit instruction
    image: torch.Tensor
    source: torch.Tensor | None = None
    sample_id: str = ""


@runtime_checkable
class RewardFunction(Protocol):
    task: Task

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]: ...


def is_scored(b: RewardBreakdown) -> bool:
    """Whether a reward counts: its status says every judgement parsed, and it has a finite value. A reward with a
    failed status is dropped even when the parse-failure policy gave it a value (min_reward's 0)."""
    return b.status == "ok" and b.reward is not None and math.isfinite(b.reward)


def to_pil(img: torch.Tensor) -> Any:
    from PIL import Image

    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


class _Cheap:
    formulation = "cheap"

    def __init__(self, task: Task = "gen") -> None:
        self.task = task

    def score(self, img: torch.Tensor) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        out = []
        for it in items:
            s = float(self.score(it.image.float()))
            out.append(
                RewardBreakdown(
                    task=self.task,
                    formulation=self.formulation,
                    reward=s,
                    status="ok",
                    raw_scores={self.formulation: s},
                )
            )
        return out


class BrightnessReward(_Cheap):
    """Mean pixel value in [0, 1]."""

    formulation = "brightness"

    def score(self, img: torch.Tensor) -> float:
        return float(img.mean())


class RednessReward(_Cheap):
    """Mean of R − (G + B)/2, in [−1, 1]."""

    formulation = "redness"

    def score(self, img: torch.Tensor) -> float:
        return float((img[0] - 0.5 * (img[1] + img[2])).mean())


class TritonReward:
    """FIRM's reward service (critic behind Triton) through `firm.serving.RewardClient` (gRPC)."""

    def __init__(self, task: Task, endpoints: list[str], **client_kwargs: Any) -> None:
        from firm.serving import RewardClient

        self.task = task
        self.client = RewardClient(endpoints, **client_kwargs)
        self._rubrics: str | None = None

    @property
    def rubrics(self) -> str:
        """The rubric pack the service asks its critic with (`name@sha256[:12]`; "" if it does not say)."""
        if self._rubrics is None:
            self._rubrics = self.client.served_rubrics()
        return self._rubrics

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        if self.task == "edit":
            if any(it.source is None for it in items):
                raise ConfigError("edit rewards need the source image of every rollout")
            return self.client.score_edit([(to_pil(it.source), to_pil(it.image), it.prompt) for it in items])  # type: ignore[arg-type]
        return self.client.score_gen([(to_pil(it.image), it.prompt) for it in items])

    def close(self) -> None:
        self.client.close()


class InProcessCriticReward:
    """A `firm.critic.Critic` loaded in this process (tests and small runs); CME / QMA with the default weights."""

    def __init__(self, task: Task, critic_uri: str, *, quality: bool = True, **critic_kwargs: Any) -> None:
        from firm.critic.critic import Critic

        self.task = task
        self.quality = quality
        self.critic = Critic.from_pretrained(critic_uri, **critic_kwargs)
        self.rubrics = self.critic.pack.ref

    def __call__(self, items: Sequence[RewardItem]) -> list[RewardBreakdown]:
        from firm.critic.critic import EditInput, GenInput

        if self.task == "edit":
            edits = [
                EditInput(
                    source=to_pil(it.source),
                    edited=to_pil(it.image),
                    instruction=it.prompt,
                    sample_id=it.sample_id,
                )  # type: ignore[arg-type]
                for it in items
            ]
            return [b for b, _ in self.critic.edit_rewards(edits)]
        gens = [GenInput(image=to_pil(it.image), prompt=it.prompt, sample_id=it.sample_id) for it in items]
        return [b for b, _ in self.critic.gen_rewards(gens, quality=self.quality)]


def with_retries(
    fn: RewardFunction, items: Sequence[RewardItem], retries: int, backoff_s: float
) -> list[RewardBreakdown]:
    """Call the reward, retrying transient failures; after the last one raise `RewardServiceError` (never fabricate)."""
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            out = fn(items)
            if len(out) != len(items):
                raise RewardServiceError(f"reward returned {len(out)} results for {len(items)} items")
            return out
        except (ConfigError, InputError):  # the caller's fault: retrying cannot help
            raise
        except Exception as exc:  # service down, timeouts, server errors
            last = exc
            log.warning("reward call failed (attempt %d/%d): %s", attempt + 1, retries + 1, exc)
            if attempt < retries:
                time.sleep(backoff_s * (2**attempt))
    raise RewardServiceError(f"reward service failed after {retries + 1} attempts: {last}") from last


def build_reward(cfg: Any, task: Task) -> RewardFunction:
    """The reward named by an `RLConfig.reward` section."""
    from firm.config import get_settings

    if cfg.kind == "brightness":
        return BrightnessReward(task)
    if cfg.kind == "redness":
        return RednessReward(task)
    if cfg.rubrics and cfg.kind != "critic":
        raise ConfigError(
            f"reward.rubrics applies to reward.kind=critic; a {cfg.kind} reward cannot choose one (a triton service "
            "asks with the pack it was exported with: firmctl serve export --rubrics)"
        )
    if cfg.kind == "triton":
        url = cfg.url or get_settings().triton_url
        return TritonReward(task, [u.strip() for u in url.split(",") if u.strip()], **cfg.options)
    if cfg.kind == "critic":
        if not cfg.critic_uri:
            raise ConfigError("reward.kind=critic needs reward.critic_uri")
        options = {"rubrics": cfg.rubrics, **cfg.options} if cfg.rubrics else dict(cfg.options)
        return InProcessCriticReward(task, cfg.critic_uri, quality=cfg.quality, **options)
    raise ConfigError(f"reward.kind={cfg.kind}: unknown")
