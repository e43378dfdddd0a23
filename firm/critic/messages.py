"""The chat messages a critic sees — shared by `Critic` (inference), the critic SFT trainer, the OpenAI-compatible
bench backend and the vLLM serving engine.

The rubric (from its pack) decides the layout: an optional system turn, then one user turn holding the images
(before or after the text; an edit's images in the rubric's `image_order`, source then edited by default) and the
rendered rubric text. For SFT the assistant's answer is appended as a last turn. `encode_images` applies the
rubric's image codec (the official reward clients send JPEG, so the official pack round-trips through JPEG).
Keep this the only place that lays out a critic prompt, so that training and inference can never drift apart.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from firm.errors import InputError
from firm.rewards.rubrics import Rubric


def encode_images(rubric: Rubric, images: Sequence[Any]) -> list[Any]:
    """The images as the rubric's codec leaves them (RGB PIL images; unchanged for codec `none`)."""
    codec = rubric.images.codec
    if codec == "none":
        return list(images)
    from PIL import Image

    out = []
    for img in images:
        buf = io.BytesIO()
        rgb = img.convert("RGB")
        if codec == "jpeg":
            rgb.save(buf, format="JPEG", quality=rubric.images.jpeg_quality)
        else:
            rgb.save(buf, format="PNG")
        buf.seek(0)
        decoded = Image.open(buf)
        decoded.load()
        out.append(decoded.convert("RGB"))
    return out


def build_messages(
    rubric: Rubric,
    images: Sequence[Any],
    *,
    answer: str | None = None,
    **fields: str | None,
) -> list[dict[str, Any]]:
    """Chat messages for one (rubric, images, fields) item.

    `images` come in the canonical order (edits: source, then edited); the rubric's layout places them.
    `fields` are the rubric's template fields (`instruction`, `prompt`, `requirement`, and for teacher rubrics
    `difference_report` or `plan`). The images are carried in the message items (`{"type": "image", "image": img}`)
    so that `processor.apply_chat_template(messages, tokenize=True)` works too; `answer` adds an assistant turn.
    Raises `InputError` when the image count does not match the rubric or a required field is empty.
    """
    if len(images) != rubric.n_images:
        what = "source and edited image" if rubric.n_images == 2 else "one image"
        raise InputError(f"rubric {rubric.id} needs {rubric.n_images} image(s) ({what}), got {len(images)}")
    text = rubric.render(**fields)
    system = rubric.render_system(**fields)
    ordered = list(images)
    if rubric.n_images == 2:
        by_name = {"source": images[0], "edited": images[1]}
        ordered = [by_name[name] for name in rubric.layout.image_order]
    parts: list[dict[str, Any]] = [{"type": "image", "image": img} for img in ordered]
    text_part = {"type": "text", "text": text}
    content = [*parts, text_part] if rubric.layout.images == "before_text" else [text_part, *parts]
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": content})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def message_images(messages: list[dict[str, Any]]) -> list[Any]:
    """The images of `messages` in the order the chat template places their placeholders."""
    return [
        part["image"]
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
        if part.get("type") == "image"
    ]


def render_prompt(
    processor: Any, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
) -> str:
    """The chat-templated prompt string (image placeholders not yet expanded; the processor does that)."""
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
