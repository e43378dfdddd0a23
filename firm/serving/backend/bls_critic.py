"""The reward models' critic on the python engine: one BLS call to `firm_critic` per merged batch.

One copy of the weights per server: only `firm_critic` loads the critic; `firm_edit_reward` and `firm_gen_reward`
forward each merged batch to it as ONE inference request (edits: two rows per sample, both axes; generation: one
or two), in the same server process tree, so their stubs never import torch. The images travel as the encoded
bytes the client sent (validated by the reward model first, so one bad image fails only its own request), the
rubric ids as `task.axis` (firm_critic asks with the rubric pack the repository was exported with), and
firm_critic's dynamic batcher may merge the calls of both reward models and of direct `firm_critic` clients.

The cost against an in-process critic is one more queue hop and a copy of the encoded images through shared
memory; BENCHMARKS.md ("One critic per server") measures it beside the memory it saves.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from firm.errors import InputError
from firm.schemas import Judgement
from firm.serving.backend.remote_critic import RemoteCritic

CRITIC_MODEL = "firm_critic"
OUTPUTS = ["score", "expected_score", "status", "reasoning", "raw_text"]


def _encoded(img: Any) -> bytes:
    """The bytes to send: encoded bytes as they came, a PIL image as PNG."""
    if isinstance(img, bytes | bytearray):
        return bytes(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def request_arrays(requests: Sequence[Any]) -> dict[str, np.ndarray]:
    """firm_critic's input tensors for `CriticRequest`s of one task (same image count per row)."""
    counts = {len(r.images) for r in requests}
    if len(counts) != 1:
        raise InputError("one firm_critic call carries rows of one task (same number of images)")
    images = np.array([[_encoded(im) for im in r.images] for r in requests], dtype=np.object_)
    ids = np.array([[f"{r.task}.{r.axis}".encode()] for r in requests], dtype=np.object_)
    texts = np.array(
        [[((r.instruction if r.task == "edit" else r.prompt) or "").encode("utf-8")] for r in requests],
        dtype=np.object_,
    )
    return {"images": images, "rubric_id": ids, "text": texts}


def judgements_from(requests: Sequence[Any], out: dict[str, np.ndarray]) -> list[Judgement]:
    """firm_critic's output tensors back into one `Judgement` per request."""

    def text(name: str, i: int) -> str:
        return bytes(out[name][i, 0]).decode("utf-8", "replace")

    js = []
    for i, req in enumerate(requests):
        status = text("status", i)
        row = [float(x) for x in out["score"][i]]
        score: Any = None
        if status == "ok":
            score = [int(x) for x in row] if req.axis == "quality" else int(row[0])
        exp = float(out["expected_score"][i, 0])
        js.append(
            Judgement(
                task=req.task,
                axis=req.axis,
                status=status,  # type: ignore[arg-type]
                score=score,
                expected_score=None if math.isnan(exp) else exp,
                reasoning=text("reasoning", i),
                raw_text=text("raw_text", i),
                parsed_from=CRITIC_MODEL,
                sample_id=req.sample_id,
            )
        )
    return js


class BlsCritic(RemoteCritic):
    """Critic facade over BLS calls to the python-backend `firm_critic` of the same server."""

    def judge(self, requests: Sequence[Any], readout: str = "text", batch_size: int = 0) -> list[Judgement]:
        import triton_python_backend_utils as pb_utils

        if not requests:
            return []
        arrays = request_arrays(requests)
        request = pb_utils.InferenceRequest(
            model_name=CRITIC_MODEL,
            inputs=[pb_utils.Tensor(name, arr) for name, arr in arrays.items()],
            requested_output_names=OUTPUTS,
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{CRITIC_MODEL}: {response.error().message()}")
        out = {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in OUTPUTS}
        return judgements_from(requests, out)
