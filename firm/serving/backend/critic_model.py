"""`firm_critic`: one judgement per row — the rubric's images, its id (`task.axis`, optionally `.student` and the
pack's name, e.g. `edit.execution.student.firm-v1`) and its text field (the instruction for edits, the prompt for
gen/instruction, ignored for quality) → score, expected score, parse status, reasoning and the raw answer. It asks
with the rubric pack copied into the repository. The reward models call it through BLS (it holds the server's
only copy of the weights); benchmarks, debugging and callers that want single axes call it directly."""

from __future__ import annotations

from typing import Any

from firm.errors import InputError
from firm.schemas import Judgement
from firm.serving.backend.common import bytes_col, decode_image, decode_text, f32
from firm.serving.backend.critic_runtime import CriticBackedModel


class CriticModel(CriticBackedModel):
    name = "firm_critic"

    def _setup(self) -> None:
        self.readout = self.params.get("readout", "text")

    def _decode(self, request: Any) -> list[Any]:
        from firm.critic.critic import CriticRequest

        images = self._input(request, "images", cols=None)
        rubric_ids = self._input(request, "rubric_id")
        texts = self._input(request, "text")
        if not (images.shape[0] == rubric_ids.shape[0] == texts.shape[0]):
            raise InputError("inputs images, rubric_id and text disagree on batch size")
        out = []
        for r in range(images.shape[0]):
            rubric = self.critic.pack.by_id(decode_text(rubric_ids[r, 0], f"rubric_id[{r}]"))
            if rubric.role != "student":
                raise InputError(
                    f"rubric_id[{r}]: {rubric.id} is a teacher rubric; the critic serves student rubrics"
                )
            if images.shape[1] != rubric.n_images:
                raise InputError(
                    f"rubric {rubric.id} needs {rubric.n_images} image(s) per row, got {images.shape[1]}"
                )
            imgs = [
                decode_image(images[r, j], f"images[{r}][{j}]", self.max_decode_pixels)
                for j in range(images.shape[1])
            ]
            text = decode_text(texts[r, 0], f"text[{r}]", allow_empty=rubric.axis == "quality")
            field = "instruction" if rubric.task == "edit" else "prompt"
            out.append(
                CriticRequest(task=rubric.task, axis=rubric.axis, images=imgs, **{field: text or None})
            )
        return out

    def _score(self, reqs: list[Any]) -> list[Judgement]:
        js = self.critic.judge(reqs, readout=self.readout, batch_size=len(reqs))
        for j in js:
            self.metrics.judged(j.axis, j.status)
        return js

    def _encode(self, js: list[Judgement]) -> list[Any]:
        pb = self.pb
        scores = [
            j.score if isinstance(j.score, list) else (None if j.score is None else [j.score]) for j in js
        ]
        return [
            pb.Tensor("score", f32(scores, cols=3)),
            pb.Tensor("expected_score", f32([j.expected_score for j in js])),
            pb.Tensor("status", bytes_col([j.status for j in js])),
            pb.Tensor("reasoning", bytes_col([j.reasoning for j in js])),
            pb.Tensor("raw_text", bytes_col([j.raw_text for j in js])),
        ]
