"""Models FIRM builds itself: tiny random-init Qwen3-VL critics for tests and the quickstart (`firm.models.tiny`),
image-only Qwen-VL processors that work without torchvision (`firm.models.processors`), and drawn test pictures
(`firm.models.images`). Importing this package is cheap; torch/transformers load inside the builders."""
