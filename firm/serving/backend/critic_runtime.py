"""Load the `Critic` inside a python-backend model instance, as the model's config parameters say."""

from __future__ import annotations

from typing import Any

from firm.serving.backend.common import (
    DEFAULT_MAX_DECODE_PIXELS,
    Metrics,
    ModelParams,
    parse_args,
    rows_of,
    serve_batch,
)


def quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings in the server log."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def load_critic(params: ModelParams, args: dict[str, Any]) -> Any:
    """`Critic.from_pretrained` on the repository's weights (or the referenced URI / HF id), on this instance's device.

    KIND_GPU instances get `cuda:<model_instance_device_id>`; KIND_CPU instances run on the CPU.
    """
    quiet_transformers()
    if params.get("engine", "python") == "vllm":  # firm_critic is a vLLM-backend model: call it through BLS
        from firm.serving.backend.vllm_critic import VllmCritic

        return VllmCritic(
            params.critic_location,
            max_pixels=params.get_int("max_pixels", 512 * 512),
            max_new_tokens=params.get_int("max_new_tokens", 64),
        )
    from firm.critic.critic import Critic

    threads = params.get_int("threads", 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    device = "cpu"
    if args.get("model_instance_kind") == "GPU" or params.get("device", "cpu") == "gpu":
        device = f"cuda:{int(args.get('model_instance_device_id', 0) or 0)}"
    dtype = params.get("dtype", "auto")
    return Critic.from_pretrained(
        params.critic_location,
        device=device,
        dtype=None if dtype == "auto" else dtype,
        max_pixels=params.get_int("max_pixels", 512 * 512),
        max_new_tokens=params.get_int("max_new_tokens", 64),
    )


class CriticBackedModel:
    """Base of FIRM's python-backend models: loads the critic once per instance, reads inputs, and serves each
    merged batch through `serve_batch` (per-request INVALID_ARGUMENT, one batched critic call for the rest).
    Subclasses set `name` and implement `_decode`, `_score`, `_encode` (and optionally `_setup`)."""

    name = ""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        _config, self.params = parse_args(args)
        self.max_decode_pixels = self.params.get_int("max_decode_pixels", DEFAULT_MAX_DECODE_PIXELS)
        self.critic = load_critic(self.params, args)
        self.metrics = Metrics(pb_utils, self.name)
        self._setup()

    def _setup(self) -> None:
        """Read model-specific config parameters (after the critic is loaded)."""

    def _input(self, request: Any, name: str, cols: int | None = 1) -> Any:
        t = self.pb.get_input_tensor_by_name(request, name)
        return rows_of(name, None if t is None else t.as_numpy(), cols)

    def execute(self, requests: list[Any]) -> list[Any]:
        return serve_batch(self.pb, requests, self._decode, self._score, self._encode, self.metrics)

    def _decode(self, request: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _score(self, decoded: list[Any]) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _encode(self, results: list[Any]) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError
