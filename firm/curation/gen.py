"""Generation curation, plan-then-score (the paper's FIRM-Gen pipeline, FIRM's implementation).

Per generation (prompt, image):

1. **Plan** — an LLM planner turns the prompt into a checklist of verification questions (subjects, attributes and
   actions, counts, spatial relations, style and composition, negative constraints; `firm.curation.prompts`:
   `plan`). Text only: no image.
2. **Scoring** — a VLM scorer sees the image, the prompt AND the plan with the pack's `gen.instruction.teacher`
   rubric, checks the plan item by item and ends with `\\boxed{k}`; `parse_answer("gen", ...)` reads the score.
3. **Student target** — the scorer's answer, paired with the *student* prompt (no plan); sentences that mention
   the plan/checklist are cleaned, the sample dropped, or kept (`leak_policy`); a cleaned answer must still parse
   to the same score, else the sample is dropped (`leak_uncleanable`).

Then `firm.curation.runner` balances, splits, writes and publishes. Only the instruction axis is curated (the
paper's FIRM-Gen data); quality has no plan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import Field

from firm.curation.confidence import TOP_LOGPROBS, answer_confidence
from firm.curation.edit import leak_outcome
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
from firm.curation.teachers import AsyncTeacher, CachedTeacher, Teacher, TeacherRequest, open_teachers

GEN_AXES = ("instruction",)


class GenCurationConfig(CurationConfig):
    """Generation curation settings."""

    prompts: str | None = Field(default=None, description="stage-1 prompts YAML (None: firm-curation-v1)")


class _GenStages:
    def __init__(self, cfg: GenCurationConfig, planner: Teacher, scorer: Teacher) -> None:
        from firm.curation.prompts import load_prompts
        from firm.rubric_store import load_pack

        self.cfg, self.planner, self.scorer = cfg, planner, scorer
        self.plan_prompt = load_prompts(cfg.prompts).get("plan")
        self.rubric = load_pack(cfg.rubrics).get("gen", "instruction", "teacher")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Callable[[Prepared], Awaitable[ItemRecord]]]:
        """The planner and the scorer opened on the running event loop; yields the per-item coroutine."""
        async with open_teachers(self.planner, self.scorer) as (planner, scorer):
            yield lambda p: self._item(planner, scorer, p)

    async def _item(self, planner: AsyncTeacher, scorer: AsyncTeacher, p: Prepared) -> ItemRecord:
        """One generation through the stages: plan → score against the plan."""
        from firm.critic.messages import build_messages, encode_images

        rec = ItemRecord(
            id=p.item.id, images=list(p.item.images), image_names=image_names(p), dedupe=p.dedupe
        )
        pp = self.plan_prompt
        ans = await planner.ask(
            TeacherRequest(messages=pp.messages(prompt=p.item.text), max_tokens=pp.max_new_tokens)
        )
        plan = stage_text(rec, ans, "plan")
        if plan is None:
            return rec
        imgs = encode_images(self.rubric, [p.images[0].image])
        msgs = build_messages(self.rubric, imgs, prompt=p.item.text, plan=plan)
        ans = await scorer.ask(
            TeacherRequest(
                messages=msgs, max_tokens=self.rubric.generation.max_new_tokens, top_logprobs=TOP_LOGPROBS
            )
        )
        add_usage(rec, ans)
        self._score(rec, p.item.text, ans)
        return rec

    def _score(self, rec: ItemRecord, prompt: str, ans: Any) -> None:
        from firm.rewards.parsing import parse_answer

        axis = "instruction"
        if not ans.ok:
            rec.drops[axis] = f"teacher_{ans.error}"
            return
        res = parse_answer("gen", ans.text)
        if not res.ok:
            rec.drops[axis] = "truncated" if ans.truncated else res.status
            return
        text, note = leak_outcome(ans.text.strip(), "gen", self.cfg.leak_policy)
        if text is not None and note == "leak_cleaned":
            again = parse_answer("gen", text)
            if not again.ok or again.score != res.score:
                text, note = None, "leak_uncleanable"
        if text is None:
            rec.drops[axis] = note or "leak_dropped"
            return
        if note:
            rec.notes.append(note)
        assert isinstance(res.score, int)
        rec.samples.append(
            Sample(id=rec.id, axis=axis, score=res.score, target=text, text=prompt,
                   confidence=answer_confidence(ans, res))
        )  # fmt: skip


def curate_gen(cfg: GenCurationConfig, planner: Teacher, scorer: Teacher) -> CurationResult:
    """Curate a generation (instruction-following) critic SFT dataset from a manifest of (prompt, image) items."""
    from firm.curation.prompts import load_prompts
    from firm.rubric_store import load_pack

    cache = default_cache(cfg)
    wp = CachedTeacher(planner, cache) if cache else planner
    ws = CachedTeacher(scorer, cache) if cache else scorer
    for t in (wp, ws):
        check = getattr(t, "check", None)
        if callable(check):
            check()
    prompts, pack = load_prompts(cfg.prompts), load_pack(cfg.rubrics)
    fingerprint = {
        "kind": "gen", "input": cfg.input, "out": cfg.out, "planner": planner.model_id, "scorer": scorer.model_id,
        "prompts": prompts.sha256, "rubrics": pack.sha256, "leak_policy": cfg.leak_policy, "seed": cfg.seed,
    }  # fmt: skip
    meta = {
        "prompts": prompts.summary(), "rubrics": pack.ref, "planner_model": planner.name,
        "scorer_model": scorer.name, "cache": cache,
    }  # fmt: skip
    return run_curation(cfg, "gen", _GenStages(cfg, wp, ws), fingerprint=fingerprint, axes=GEN_AXES, meta=meta,
                        teachers=[wp, ws])  # fmt: skip
