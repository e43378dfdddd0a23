"""Image-only Qwen-VL processors that work without torchvision.

Transformers' Qwen-VL processors insist on a video processor, which needs torchvision; without it
`AutoProcessor.from_pretrained` silently returns just the tokenizer. FIRM critics only ever see images, so these
module-level subclasses pass `video_processor=None` and use the PIL image processor. They are importable by name,
so a processor saved with `save_pretrained` reloads through `FirmQwen3VLProcessor.from_pretrained(dir)`.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

# Qwen's chat template, reduced to what critics need: system/user/assistant turns whose content is a string or a
# list of {"type": "image"} / {"type": "text", "text": ...} items, any number of images per message.
QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class FirmQwen3VLProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` for images only (no video processor, so no torchvision)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kw: Any
    ):
        kw.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kw)


class FirmQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images only (no video processor, so no torchvision)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kw: Any
    ):
        kw.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, video_processor=None, chat_template=chat_template, **kw)


def image_processor(
    *, patch_size: int = 14, merge_size: int = 2, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
) -> Qwen2VLImageProcessorPil:
    """The PIL Qwen-VL image processor (no torchvision needed)."""
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )


PROCESSOR_FOR_MODEL_TYPE: dict[str, type] = {
    "qwen3_vl": FirmQwen3VLProcessor,
    "qwen3_vl_moe": FirmQwen3VLProcessor,
    "qwen2_5_vl": FirmQwen2_5_VLProcessor,
    "qwen2_vl": FirmQwen2_5_VLProcessor,
}
