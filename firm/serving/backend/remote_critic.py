"""What the reward models need from a critic they do not hold: `edit_rewards` / `gen_rewards` over a `judge` that
sends the rubric requests to `firm_critic` (BLS to the python-engine critic, or to a vLLM-backend critic).

The reward models call these exactly as they would call the in-process `Critic`, so CME/QMA and the parse-failure
policies are applied in one place (`firm.rewards.formulas`) whatever the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firm.schemas import Judgement


class RemoteCritic:
    """Subclasses implement `judge(requests, readout, batch_size) -> list[Judgement]` (one per request, in order)."""

    def judge(self, requests: Sequence[Any], readout: str = "text", batch_size: int = 0) -> list[Judgement]:
        raise NotImplementedError

    def edit_rewards(self, items: Sequence[Any], config: Any, policy: str, batch_size: int = 0) -> list[Any]:
        from firm.critic.critic import CriticRequest
        from firm.rewards.formulas import edit_reward

        reqs = [
            CriticRequest(task="edit", axis=axis, images=[e.source, e.edited], instruction=e.instruction)
            for e in items
            for axis in ("execution", "consistency")
        ]
        js = self.judge(reqs, config.readout, batch_size)
        return [
            (edit_reward(js[2 * i], js[2 * i + 1], config, policy), (js[2 * i], js[2 * i + 1]))
            for i in range(len(items))
        ]

    def gen_rewards(
        self, items: Sequence[Any], quality: bool, config: Any, policy: str, batch_size: int = 0
    ) -> list[Any]:
        from firm.critic.critic import CriticRequest
        from firm.rewards.formulas import gen_reward

        axes = ("instruction", "quality") if quality else ("instruction",)
        reqs = [
            CriticRequest(task="gen", axis=a, images=[g.image], prompt=g.prompt) for g in items for a in axes
        ]
        js = self.judge(reqs, config.readout, batch_size)
        k = len(axes)
        out = []
        for i in range(len(items)):
            q = js[k * i + 1] if quality else None
            out.append((gen_reward(js[k * i], q, config, policy), (js[k * i], q)))
        return out
