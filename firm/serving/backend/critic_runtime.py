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


def _optional_int(params: ModelParams, key: str) -> int | None:
    """An integer parameter where 0 or absent means "not set" (the rubric pack's or the processor's value)."""
    value = params.get_int(key, 0)
    return value or None


def load_remote_critic(params: ModelParams) -> Any:
    """The reward models' critic: `firm_critic` of the same server, called through BLS. On the python engine that
    is `BlsCritic` (no weights, no torch in this stub); on the vLLM engine `VllmCritic` renders the prompts."""
    if params.get("engine", "python") == "vllm":
        quiet_transformers()
        from firm.serving.backend.vllm_critic import VllmCritic

        return VllmCritic(
            params.critic_location,
            max_pixels=_optional_int(params, "max_pixels"),
            max_new_tokens=_optional_int(params, "max_new_tokens"),
            rubrics=params.rubrics_location,
        )
    from firm.serving.backend.bls_critic import BlsCritic

    return BlsCritic()


def load_critic(params: ModelParams, args: dict[str, Any]) -> Any:
    """`Critic.from_pretrained` on the repository's weights (or the referenced URI / HF id) with the repository's
    rubric pack, on this instance's device. KIND_GPU instances get `cuda:<model_instance_device_id>`; KIND_CPU
    instances run on the CPU.
    """
    quiet_transformers()
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
        max_pixels=_optional_int(params, "max_pixels"),
        max_new_tokens=_optional_int(params, "max_new_tokens"),
        rubrics=params.rubrics_location,
    )


class CriticBackedModel:
    """Base of FIRM's python-backend models: gets its critic once per instance, reads inputs, and serves each
    merged batch through `serve_batch` (per-request INVALID_ARGUMENT, one batched critic call for the rest).
    `firm_critic` holds the weights (`remote = False`); the reward models call it (`remote = True`).
    Subclasses set `name` and implement `_decode`, `_score`, `_encode` (and optionally `_setup`)."""

    name = ""
    remote = False

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        _config, self.params = parse_args(args)
        self.max_decode_pixels = self.params.get_int("max_decode_pixels", DEFAULT_MAX_DECODE_PIXELS)
        self.critic = load_remote_critic(self.params) if self.remote else load_critic(self.params, args)
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
