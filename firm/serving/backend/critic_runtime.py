"""Build the critic inside a python-backend model instance, as the model's config parameters say."""

from __future__ import annotations

from typing import Any

from firm.serving.backend.common import ModelParams


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
    return params.get_int(key, 0) or None


def load_critic(params: ModelParams, args: dict[str, Any]) -> Any:
    """`Critic.from_pretrained` on the repository's weights (or the referenced URI / HF id) with the repository's
    rubric pack, on this instance's device. KIND_GPU instances get `cuda:<model_instance_device_id>`; KIND_CPU
    instances run on the CPU."""
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


def load_vllm_critic(params: ModelParams) -> Any:
    """The vLLM engine's reward models: a facade that renders prompts here and calls the vLLM `firm_critic`."""
    quiet_transformers()
    from firm.serving.backend.vllm_critic import VllmCritic

    return VllmCritic(
        params.critic_location,
        max_pixels=_optional_int(params, "max_pixels"),
        max_new_tokens=_optional_int(params, "max_new_tokens"),
        rubrics=params.rubrics_location,
    )
