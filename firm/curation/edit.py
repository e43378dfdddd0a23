"""Editing curation, difference-first (the paper's FIRM-Edit pipeline, FIRM's implementation).

Per edit pair (source, edited, instruction):

1. **Difference report** — a teacher VLM sees (source, edited) and writes the obvious change and the detailed
   differences, without judging (`firm.curation.prompts`: `difference_report`).
2. **Rewriting** (a configurable share, chosen by id hash) — an LLM writes an instruction the existing edit does NOT
   carry out (`rewrite_instruction`), so low execution scores exist in the data; the sample id gets `~rw`.
3. **Scoring** — the teacher sees source, edited, the instruction AND the report, and answers each axis with the
   pack's teacher rubric (`edit.execution.teacher`, `edit.consistency.teacher`); `parse_answer` reads the score.
   Each axis becomes one sample; unparseable / out-of-range / truncated answers are dropped and counted. The
   teacher's confidence in its score (from the endpoint's logprobs, `firm.curation.confidence`) is kept with it.
4. **Student target** — privileged-information distillation: the student row pairs the *student* prompt (no report)
   with `{"reasoning": <teacher rationale>, "score": [k]}`; rationales that mention the report are cleaned,
   dropped or kept (`leak_policy`).

Then `firm.curation.runner` balances, splits, writes and publishes (with `stats.json` and `histogram.png`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import Field

from firm.curation.confidence import TOP_LOGPROBS, answer_confidence
from firm.curation.leaks import clean_text, find_leaks
from firm.curation.runner import (
    CurationConfig,
    CurationResult,
    ItemRecord,
    Prepared,
    Sample,
    add_usage,
    default_cache,
    image_names,
    run_curation,
    stage_text,
)
from firm.curation.selection import unit_hash
from firm.curation.teachers import AsyncTeacher, CachedTeacher, Teacher, TeacherRequest, open_teachers

EDIT_AXES = ("execution", "consistency")


class EditCurationConfig(CurationConfig):
    """Editing curation settings (`CurationConfig` plus rewriting and the axes)."""

    rewrite_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="share of instructions rewritten")
    axes: tuple[str, ...] = Field(default=EDIT_AXES, min_length=1)
    prompts: str | None = Field(default=None, description="stage-1 prompts YAML (None: firm-curation-v1)")


def first_line(text: str) -> str:
    for line in text.splitlines():
        s = line.strip().strip('"').strip("'").strip()
        if s:
            return s
    return ""


def edit_target(reasoning: str, score: int) -> str:
    """The student answer in the edit answer format."""
    return json.dumps({"reasoning": reasoning, "score": [score]}, ensure_ascii=False)


def leak_outcome(text: str, kind: str, policy: str) -> tuple[str | None, str | None]:
    """(text to use or None, note or drop reason) for a rationale under the leak policy."""
    if not find_leaks(text, kind):
        return text, None
    if policy == "keep":
        return text, "leak_kept"
    if policy == "drop":
        return None, "leak_dropped"
    cleaned = clean_text(text, kind)
    return (cleaned, "leak_cleaned") if cleaned else (None, "leak_uncleanable")


class _EditStages:
    def __init__(self, cfg: EditCurationConfig, teacher: Teacher, rewriter: Teacher | None) -> None:
        from firm.curation.prompts import load_prompts
        from firm.rubric_store import load_pack

        bad = [a for a in cfg.axes if a not in EDIT_AXES]
        if bad:
            from firm.errors import InputError

            raise InputError(f"axes: {bad[0]!r} is not an edit axis (execution, consistency)")
        self.cfg, self.teacher, self.rewriter = cfg, teacher, rewriter or teacher
        self.prompts = load_prompts(cfg.prompts)
        self.pack = load_pack(cfg.rubrics)
        self.rubrics = {a: self.pack.get("edit", a, "teacher") for a in cfg.axes}

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Callable[[Prepared], Awaitable[ItemRecord]]]:
        """The teachers opened on the running event loop; yields the coroutine that curates one item."""
        async with open_teachers(self.teacher, self.rewriter) as (teacher, rewriter):
            yield lambda p: self._item(teacher, rewriter, p)

    async def _item(self, teacher: AsyncTeacher, rewriter: AsyncTeacher, p: Prepared) -> ItemRecord:
        """One edit pair through the stages: report → (rewrite) → both axes scored at once."""
        from firm.critic.messages import build_messages, encode_images

        cfg = self.cfg
        rec = ItemRecord(
            id=p.item.id, images=list(p.item.images), image_names=image_names(p), dedupe=p.dedupe
        )
        images = [im.image for im in p.images]
        # 1. difference report
        dr = self.prompts.get("difference_report")
        ans = await teacher.ask(TeacherRequest(messages=dr.messages(images), max_tokens=dr.max_new_tokens))
        report = stage_text(rec, ans, "report")
        if report is None:
            return rec
        # 2. rewriting
        instruction, rewritten = p.item.text, False
        if unit_hash(p.item.id, f"rewrite-{cfg.seed}") < cfg.rewrite_ratio:
            from firm.curation.inputs import normalize_text

            rw = self.prompts.get("rewrite_instruction")
            ans = await rewriter.ask(
                TeacherRequest(messages=rw.messages(instruction=instruction, difference_report=report),
                               max_tokens=rw.max_new_tokens)
            )  # fmt: skip
            add_usage(rec, ans)
            new = first_line(ans.text) if ans.ok else ""
            if not new or normalize_text(new) == normalize_text(instruction):
                rec.notes.append("rewrite_failed")
            else:
                instruction, rewritten = new, True
                rec.notes.append("rewritten")
        # 3. scoring, one request per axis, both in flight together (the images pass the codec once per codec)
        encoded: dict[str, list[Any]] = {}
        reqs = []
        for axis in cfg.axes:
            rubric = self.rubrics[axis]
            codec = (
                rubric.images.codec if rubric.images.codec != "jpeg" else f"jpeg{rubric.images.jpeg_quality}"
            )
            if codec not in encoded:
                encoded[codec] = encode_images(rubric, images)
            msgs = build_messages(rubric, encoded[codec], instruction=instruction, difference_report=report)
            reqs.append(
                TeacherRequest(
                    messages=msgs, max_tokens=rubric.generation.max_new_tokens, top_logprobs=TOP_LOGPROBS
                )
            )
        answers = await asyncio.gather(*(teacher.ask(r) for r in reqs))
        for axis, ans in zip(cfg.axes, answers, strict=True):
            add_usage(rec, ans)
            self._score(rec, rewritten, axis, instruction, ans)
        return rec

    def _score(self, rec: ItemRecord, rewritten: bool, axis: str, instruction: str, ans: Any) -> None:
        from firm.rewards.parsing import parse_answer

        if not ans.ok:
            rec.drops[axis] = f"teacher_{ans.error}"
            return
        res = parse_answer(self.rubrics[axis].answer_format, ans.text)
        if not res.ok:
            rec.drops[axis] = "truncated" if ans.truncated else res.status
            return
        reasoning, note = leak_outcome(res.reasoning, "edit", self.cfg.leak_policy)
        if reasoning is None:
            rec.drops[axis] = note or "leak_dropped"
            return
        if note:
            rec.notes.append(note)
        assert isinstance(res.score, int)
        sid = f"{rec.id}~rw" if rewritten else rec.id
        rec.samples.append(
            Sample(id=sid, axis=axis, score=res.score, target=edit_target(reasoning, res.score), text=instruction,
                   rewritten=rewritten, confidence=answer_confidence(ans, res))
        )  # fmt: skip


def curate_edit(
    cfg: EditCurationConfig, teacher: Teacher, *, rewriter: Teacher | None = None
) -> CurationResult:
    """Curate an editing critic SFT dataset from a manifest of edit pairs (see the module docstring).

    `teacher` writes the reports and the scores; `rewriter` (default: the teacher) rewrites instructions. Teacher
    calls are cached under `cfg.cache` (default `<datasets bucket>/teacher-cache`; `"off"` disables)."""
    from firm.curation.prompts import load_prompts
    from firm.rubric_store import load_pack

    cache = default_cache(cfg)
    wrapped = CachedTeacher(teacher, cache) if cache else teacher
    rw = rewriter if rewriter is not None else None
    rw_wrapped = (CachedTeacher(rw, cache) if cache else rw) if rw is not None else None
    check = getattr(wrapped, "check", None)
    if callable(check):
        check()
    if rw_wrapped is not None and callable(getattr(rw_wrapped, "check", None)):
        rw_wrapped.check()  # type: ignore[union-attr]
    stages = _EditStages(cfg, wrapped, rw_wrapped)
    prompts, pack = load_prompts(cfg.prompts), load_pack(cfg.rubrics)
    fingerprint = {
        "kind": "edit", "input": cfg.input, "out": cfg.out, "teacher": teacher.model_id,
        "rewriter": rw.model_id if rw else None, "prompts": prompts.sha256, "rubrics": pack.sha256,
        "rewrite_ratio": cfg.rewrite_ratio, "leak_policy": cfg.leak_policy, "axes": list(cfg.axes), "seed": cfg.seed,
    }  # fmt: skip
    meta = {
        "prompts": prompts.summary(), "rubrics": pack.ref, "teacher_model": teacher.name,
        "rewriter_model": (rw or teacher).name, "rewrite_ratio": cfg.rewrite_ratio, "cache": cache,
    }  # fmt: skip
    teachers = [t for t in (wrapped, rw_wrapped) if t is not None]
    return run_curation(cfg, "edit", stages, fingerprint=fingerprint, axes=tuple(cfg.axes), meta=meta,
                        teachers=teachers)  # fmt: skip
