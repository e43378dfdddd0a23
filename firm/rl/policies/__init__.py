"""Diffusion policy adapters: SD3/SD3.5 (`sd3`), Qwen-Image-Edit(Plus) (`qwen_edit`), tiny builders (`tiny`)."""
