"""`firm_edit_reward` and `firm_gen_reward` on the vLLM engine: python models that call the vLLM-backend
`firm_critic` through BLS (`firm.serving.backend.vllm_critic`) and compute CME / QMA here. They hold no weights.

(On the python engine the reward models are ensembles over `firm_engine`, `firm.serving.backend.engine`.)
"""

from __future__ import annotations

from typing import Any

from firm.serving.backend.apis import Api, EditRewardApi, GenRewardApi, serve_requests
from firm.serving.backend.common import DEFAULT_MAX_DECODE_PIXELS, Metrics, parse_args


class _VllmRewardModel:
    api_class: type[Api]

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        from firm.serving.backend.critic_runtime import load_vllm_critic

        self.pb = pb_utils
        _config, params = parse_args(args)
        self.critic = load_vllm_critic(params)
        self.readout = params.get("readout", "text")
        self.api = self.api_class(
            pb_utils,
            params,
            pack=self.critic.pack,
            max_decode_pixels=params.get_int("max_decode_pixels", DEFAULT_MAX_DECODE_PIXELS),
            metrics=Metrics(pb_utils, self.api_class.spec.name),
            keep_decoded=True,  # the prompts are rendered here
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return serve_requests(
            self.pb, requests, [self.api], lambda reqs: self.critic.judge(reqs, self.readout)
        )


class EditRewardModel(_VllmRewardModel):
    api_class = EditRewardApi


class GenRewardModel(_VllmRewardModel):
    api_class = GenRewardApi
