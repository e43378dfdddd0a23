"""FIRM critics: load a Qwen-VL-family critic, build its prompts, judge edits and generated images.

`Critic` and the request records live in `firm.critic.critic`; prompts in `firm.critic.messages`; image loading in
`firm.images` (shared with serving). Importing this package is cheap: torch/transformers load when a critic is built.
"""

from firm.critic.critic import Critic, CriticRequest, EditInput, GenInput
from firm.critic.messages import build_messages

__all__ = ["Critic", "CriticRequest", "EditInput", "GenInput", "build_messages"]
