"""The chat messages a critic sees — shared by `Critic` (inference) and the critic SFT trainer.

One user turn: the images first (for edits: source, then edited), then the rendered rubric text. For SFT the
assistant's answer is appended as a second turn. Keep this the only place that lays out a critic prompt, so that
training and inference can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firm.errors import InputError
from firm.rewards.rubrics import Rubric


def build_messages(
    rubric: Rubric,
    images: Sequence[Any],
    *,
    answer: str | None = None,
    **fields: str | None,
) -> list[dict[str, Any]]:
    """Chat messages for one (rubric, images, fields) item.

    `fields` are the rubric's template fields (`instruction`, `prompt`, and for teacher rubrics `difference_report`
    or `plan`). The images are carried in the message items (`{"type": "image", "image": img}`) so that
    `processor.apply_chat_template(messages, tokenize=True)` works too; `answer` adds an assistant turn (SFT).
    Raises `InputError` when the image count does not match the rubric or a required field is empty.
    """
    if len(images) != rubric.n_images:
        what = "source and edited image" if rubric.n_images == 2 else "one image"
        raise InputError(f"rubric {rubric.id} needs {rubric.n_images} image(s) ({what}), got {len(images)}")
    text = rubric.render(**fields)
    content: list[dict[str, Any]] = [{"type": "image", "image": img} for img in images]
    content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def render_prompt(
    processor: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
) -> str:
    """The chat-templated prompt string (image placeholders not yet expanded; the processor does that)."""
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
