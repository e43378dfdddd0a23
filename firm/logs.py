"""Keep library chatter out of FIRM's output, and print a run's error once.

Every run printed the same expected messages: DeepSpeed's "Setting accelerator to CPU" (on stdout, before the
JSON), diffusers' "No LoRA keys associated to CLIPTextModelWithProjection …" (a LoRA that only trains the
transformer) and "self.text_encoder_3=None … cannot be saved" (tiny policies without T5), transformers' "requires
torchvision" fallback notes, and weight-loading progress bars. `quiet_libraries()` — called by every `firmctl`
command and by the training entrypoints, and inherited by their worker processes through the environment — sets
transformers/diffusers/huggingface_hub to errors only, turns their progress bars off and drops DeepSpeed's
accelerator-detection message. FIRM's own progress and errors are unaffected.

`FIRM_LIBRARY_LOGS=1` keeps every library message (for debugging a library).

`print_error()` prints a failed run's one `error:` line once for all ranks of a distributed run, not once per rank.
"""

from __future__ import annotations

import logging
import os
import sys
import time

KEEP_ENV = "FIRM_LIBRARY_LOGS"

# Expected on every CPU run; anything else DeepSpeed says still shows.
_DEEPSPEED_EXPECTED = ("Setting accelerator to CPU",)


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # pragma: no cover - a malformed record is not ours to judge
            return True
        return not any(f in text for f in self.fragments)


_DEEPSPEED_FILTER = _DropMessages(_DEEPSPEED_EXPECTED)
_active = False  # quiet_libraries() was called in this process


def library_logs_kept() -> bool:
    return os.environ.get(KEEP_ENV, "").strip().lower() in {"1", "true", "yes"}


def quiet_libraries() -> None:
    """Silence expected library chatter (idempotent and cheap: imports nothing that is not imported yet)."""
    global _active
    if library_logs_kept():
        return
    _active = True
    # read by the libraries when they are first imported, here and in every child process
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per HTTP request (teacher calls)
    ds = logging.getLogger("DeepSpeed")
    if _DEEPSPEED_FILTER not in ds.filters:
        ds.addFilter(_DEEPSPEED_FILTER)
    quiet_loaded()


def quiet_loaded() -> None:
    """Quiet the libraries imported so far, if `quiet_libraries()` was called in this process (libraries that are
    already imported no longer read the environment, and diffusers' progress bars only have a function)."""
    if not _active or library_logs_kept():
        return
    if "transformers" in sys.modules:
        _quiet_transformers()
    if "diffusers" in sys.modules:
        _quiet_diffusers()


def _quiet_transformers() -> None:
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()


def _quiet_diffusers() -> None:
    from diffusers.utils import logging as df_logging

    df_logging.set_verbosity_error()
    df_logging.disable_progress_bar()


RANK_ERROR_GRACE_S = 3.0


def print_error(exc: BaseException | str, grace_s: float = RANK_ERROR_GRACE_S) -> None:
    """Print a failed run's one `error:` line — once for all its processes, not once per rank.

    Rank 0 prints at once. Another rank first gives rank 0 `grace_s` seconds: when every rank fails alike (a bad
    dataset, a bad config), torchrun stops the other ranks as soon as rank 0 exits, so the line appears once; a
    failure of that rank alone is still printed after the grace period.
    """
    rank = int(os.environ.get("RANK", "0") or 0)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and rank != 0:
        time.sleep(grace_s)
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    print(f"error: {text}", file=sys.stderr, flush=True)
