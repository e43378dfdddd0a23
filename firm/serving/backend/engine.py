"""`firm_engine`: the python-engine model that holds the server's only copy of the critic.

`firm_critic`, `firm_edit_reward` and `firm_gen_reward` are one-step Triton ensembles over this model (no process
and no queue of their own), so a server loads the weights once whatever models it serves — with an 8B critic,
three in-process copies would not fit one GPU. The engine declares every public model's inputs as optional;
each request carries one model's set, and the dynamic batcher merges requests of all three, which are then judged
in ONE critic call (`firm.serving.backend.apis.serve_requests`). Metrics keep the public model names.
"""

from __future__ import annotations

from typing import Any

from firm.serving.backend.apis import CriticApi, EditRewardApi, GenRewardApi, serve_requests
from firm.serving.backend.common import DEFAULT_MAX_DECODE_PIXELS, Metrics, parse_args
from firm.serving.backend.critic_runtime import load_critic
from firm.serving.spec import engine_output_name


class EngineModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        _config, self.params = parse_args(args)
        self.critic = load_critic(self.params, args)
        self.readout = self.params.get("readout", "text")
        self.confidence = self.params.get_bool("confidence", True)
        max_pixels = self.params.get_int("max_decode_pixels", DEFAULT_MAX_DECODE_PIXELS)
        self.apis = []
        for cls in (CriticApi, EditRewardApi, GenRewardApi):
            names = {t.name: engine_output_name(t.name) for t in cls.spec.outputs}
            self.apis.append(
                cls(
                    pb_utils,
                    self.params,
                    pack=self.critic.pack,
                    max_decode_pixels=max_pixels,
                    metrics=Metrics(pb_utils, cls.spec.name),
                    out_names=names,
                )
            )

    def _judge(self, requests: list[Any]) -> list[Any]:
        return self.critic.judge(
            requests, readout=self.readout, batch_size=len(requests), confidence=self.confidence
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        return serve_requests(self.pb, requests, self.apis, self._judge)
