"""`Critic`: a Qwen-VL-family generative critic that turns (images, instruction/prompt) into `Judgement`s.

Loading: `Critic.from_pretrained(src)` accepts a Hugging Face id, a local directory, or a `file://` / `s3://` URI of
a published directory (fetched and verified by `firm.storage.resolve_local`). The model is loaded with
`AutoModelForImageTextToText`, the processor with `AutoProcessor`; when the latter returns only a tokenizer (no
torchvision on this machine) the image-only `firm.models.processors` subclass is built instead.

Inference: requests are grouped into batches and run through ONE greedy `generate` call per batch (left padding).
The chat messages come from `firm.critic.messages.build_messages` (shared with SFT), the rubric from the critic's
rubric pack (`rubrics=`: a pack name, path or URI; `firm-v1` by default — `firm.rewards.packs`), the score from
`firm.rewards.parsing.parse_answer`. The pack also decides each rubric's image codec, pixel bounds and answer
budget (`max_new_tokens` per (task, axis); an explicit `max_new_tokens` overrides it for every rubric). Images are
sized by `rubric_pixel_rule` (`firm.images.pixel_rule`), the rule critic SFT trains with: one resize to multiples of
the processor's patch × merge size, within the rubric's bounds, else the processor's own (a FIRM-trained critic's
processor config carries its recipe's bounds); the processor is then called with bounds that leave them as they are.
Loading a critic whose recorded training pack (or, for the released FIRM critics, whose official pack) differs from
the one in use logs a warning.

Statuses: `ok`, `unparseable`, `out_of_range` (from the parser) and `truncated` — the answer used its whole token
budget and no score could be read, i.e. it was cut off (raise the pack's or the caller's `max_new_tokens`).

Readouts:
- `text` (the paper's): the parsed score. A failed parse gives `status != "ok"` and `score=None`, never a number.
- `expected`: additionally, the softmax over the digit tokens "1".."5" at the position where the model wrote the
  score digit (found by mapping the parser's `score_spans` character offsets to generated tokens), and the
  probability-weighted score `expected_score = Σ k·p(k)` ∈ [1, 5]. Tie-breaking continuous rewards for GRPO.
  Only the five digit logits of each step are recorded during generation (a pass-through logits processor), so the
  readout costs no (batch × tokens × vocab) logits memory.
  - quality (three sub-scores): `expected_score = E[min(s1, s2, s3)]`, treating the three digit distributions as
    independent — `Σ_k P(s1≥k)·P(s2≥k)·P(s3≥k)` — the continuous counterpart of QMA's min.
  - when the digit cannot be located in the generated tokens (the text did not parse, or the digit was merged
    into another token, e.g. a full-width "４"), the critic *teacher-forces* the rubric's canonical answer
    skeleton (`{"score": [` for edits and quality, `Final Alignment Rating: ` for gen) after the prompt and reads
    the digit distribution there (for quality, three positions, appending the most likely digit each time).
    `parsed_from` then says `teacher_forced` (or `<rule>+teacher_forced` when the text itself parsed).
    The judgement keeps the text's `status` and `score`: an unparseable answer stays `unparseable` with
    `score=None`, so reward functions still apply their `ParseFailurePolicy` to it; the teacher-forced
    `expected_score` is there for monitoring and for callers that opt in explicitly.

Confidence (both readouts, `confidence=True` by default): the same recorded digit logits give each parsed
judgement a `Judgement.confidence` (`firm.rewards.confidence`: the probability of the digit written, the
distribution's entropy and the score's std; quality: of the minimum, with each sub-score's in `sub`) — no second
generation. With the expected readout, a digit that could not be located takes the teacher-forced distribution;
with the text readout (no extra forward pass) it leaves the confidence None. An answer that did not parse has
no confidence (None, never 0).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from firm.critic.messages import build_messages, encode_images, message_images, render_prompt
from firm.errors import ConfigError, InputError
from firm.images import DEFAULT_MAX_DECODE_PIXELS, PixelRule, load_image, pixel_rule, processor_pixel_rule
from firm.rewards.confidence import judgement_confidence
from firm.rewards.packs import warn_if_mismatched
from firm.rewards.parsing import ParseResult, parse_answer
from firm.rewards.rubrics import N_IMAGES, Rubric, RubricPack
from firm.rubric_store import load_pack
from firm.schemas import AXES_BY_TASK, EditSample, GenSample, Judgement, Readout, RewardBreakdown

DIGITS = ("1", "2", "3", "4", "5")
TEACHER_FORCED = "teacher_forced"
# Canonical answer skeleton per answer format, forced after the prompt when the digit must be read there.
CANONICAL_PREFIX = {"edit": '{"score": [', "gen": "Final Alignment Rating: ", "quality": '{"score": ['}
DEFAULT_MAX_NEW_TOKENS = 256  # `generate_texts` without a rubric
TRUNCATED = "truncated"


class CriticRequest(BaseModel):
    """One thing to judge: a (task, axis) rubric, its images (edit: source then edited; gen: the image) and the
    instruction (edit) or prompt (gen instruction axis), and the optional per-sample `requirement` some packs show
    (the official templates' "requirement"). Images may be PIL images, bytes, paths or URIs."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    task: str
    axis: str
    images: list[Any] = Field(min_length=1)
    instruction: str | None = None
    prompt: str | None = None
    requirement: str | None = None
    sample_id: str | None = None

    @field_validator("images", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    @model_validator(mode="after")
    def _check(self) -> CriticRequest:
        who = f" (sample {self.sample_id})" if self.sample_id else ""
        if self.task not in AXES_BY_TASK:
            raise InputError(f"unknown task {self.task!r}{who}; expected one of {', '.join(AXES_BY_TASK)}")
        if self.axis not in AXES_BY_TASK[self.task]:
            raise InputError(
                f"unknown axis {self.axis!r} for task {self.task!r}{who}; "
                f"expected one of {', '.join(AXES_BY_TASK[self.task])}"
            )
        n_images = N_IMAGES[self.task]
        if len(self.images) != n_images:
            raise InputError(
                f"{self.task}/{self.axis}{who} needs {n_images} image(s), got {len(self.images)}"
            )
        if self.task == "edit" and not (self.instruction and self.instruction.strip()):
            raise InputError(f"edit/{self.axis}{who}: instruction must not be empty")
        if self.task == "gen" and self.axis == "instruction" and not (self.prompt and self.prompt.strip()):
            raise InputError(f"gen/instruction{who}: prompt must not be empty")
        return self

    def fields(self) -> dict[str, str | None]:
        """The rubric template fields this request fills."""
        return {"instruction": self.instruction, "prompt": self.prompt, "requirement": self.requirement}


class EditInput(BaseModel):
    """An edit to score on both axes: source image, edited image, instruction."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    source: Any
    edited: Any
    instruction: str
    sample_id: str | None = None

    @classmethod
    def of(cls, item: EditInput | EditSample) -> EditInput:
        if isinstance(item, EditSample):
            return cls(
                source=item.source_image,
                edited=item.edited_image,
                instruction=item.instruction,
                sample_id=item.id,
            )
        return item


class GenInput(BaseModel):
    """A generated image to score against its prompt."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    image: Any
    prompt: str
    sample_id: str | None = None

    @classmethod
    def of(cls, item: GenInput | GenSample) -> GenInput:
        if isinstance(item, GenSample):
            return cls(image=item.image, prompt=item.prompt, sample_id=item.id)
        return item


def _is_local(src: str | Path) -> bool:
    return not (isinstance(src, str) and "://" in src) and Path(src).expanduser().exists()


def resolve_model_source(src: str | Path) -> str:
    """A local directory for a path or `file://`/`s3://` URI (published directories are fetched and verified);
    anything else is returned unchanged and treated as a Hugging Face hub id."""
    text = str(src)
    if "://" in text:
        from firm.storage import resolve_local

        return str(resolve_local(text))
    if _is_local(text):
        return str(Path(text).expanduser())
    if text.startswith(("/", "./", "../", "~")):
        raise InputError(f"critic model {text!r}: no such directory")
    return text


def _check_device(device: str) -> None:
    """Reject an unknown or unavailable torch device before any weights are loaded."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")


def load_processor(path: str, model_type: str) -> Any:
    """`AutoProcessor`, or — when it degrades to a bare tokenizer (no torchvision) — FIRM's image-only subclass."""
    from transformers import AutoProcessor

    from firm.models.processors import PROCESSOR_FOR_MODEL_TYPE

    try:
        processor = AutoProcessor.from_pretrained(path)
    except (ImportError, ValueError, OSError, TypeError):
        processor = None
    if processor is not None and getattr(processor, "image_processor", None) is not None:
        return processor
    cls = PROCESSOR_FOR_MODEL_TYPE.get(model_type)
    if cls is None:
        raise ConfigError(
            f"critic model {path}: cannot build an image processor for model type {model_type!r} "
            f"(supported without torchvision: {', '.join(sorted(PROCESSOR_FOR_MODEL_TYPE))})"
        )
    return cls.from_pretrained(path)


def rubric_pixel_rule(processor: Any, rubric: Rubric, budget: int | None = None) -> PixelRule:
    """The resize rule for `rubric`'s images (`firm.images.pixel_rule`: the processor's factor and bounds, the
    rubric's bounds over them, an explicit `budget` over both) — the one rule of critic SFT and every serving
    path."""
    return pixel_rule(
        processor, min_pixels=rubric.images.min_pixels, max_pixels=rubric.images.max_pixels, budget=budget
    )


class Critic:
    """A generative VLM critic. Build with `Critic.from_pretrained(...)` or wrap an already loaded model."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_pixels: int | None = None,
        max_new_tokens: int | None = None,
        max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS,
        rubrics: str | RubricPack | None = None,
        name: str = "critic",
    ) -> None:
        """`max_pixels`: per-image pixel budget for every rubric (None: the pack's, else the processor's);
        `max_new_tokens`: answer budget for every rubric (None: the pack's per (task, axis));
        `rubrics`: the rubric pack (name, path, URI or loaded pack; None: firm-v1)."""
        import torch

        self.model = model.eval()
        self.processor = processor
        # left padding is asked for per call: the (possibly shared) processor is never modified
        self.tokenizer = processor.tokenizer
        self.name = name
        self.pack = load_pack(rubrics)
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.max_decode_pixels = max_decode_pixels
        own = processor_pixel_rule(processor)  # the model's own factor and bounds
        self.factor = own.factor
        self.processor_min_pixels, self.processor_max_pixels = own.min_pixels, own.max_pixels
        if max_pixels is not None and max_pixels < self.factor**2:
            raise ConfigError(f"max_pixels={max_pixels} is below one {self.factor}x{self.factor} patch")
        self.explicit_max_pixels = max_pixels
        self.max_pixels = max_pixels or self.processor_max_pixels
        self.digit_ids = self._digit_ids()
        eos = self.model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids = {i for i in [*eos_ids, im_end, self.tokenizer.pad_token_id] if isinstance(i, int)}
        self.device = next(self.model.parameters()).device
        self._torch = torch

    def rubric(self, task: str, axis: str) -> Rubric:
        """The student rubric this critic asks with for (task, axis)."""
        return self.pack.get(task, axis, "student")

    def pixel_rule(self, rubric: Rubric) -> PixelRule:
        """How `rubric`'s images are sized (`rubric_pixel_rule`): the explicit budget, else the rubric's bounds,
        else the processor's."""
        return rubric_pixel_rule(self.processor, rubric, self.explicit_max_pixels)

    def pixel_bounds(self, rubric: Rubric) -> tuple[int, int]:
        """(min, max) pixels per image of `rubric` (`pixel_rule`)."""
        rule = self.pixel_rule(rubric)
        return rule.min_pixels, rule.max_pixels

    def answer_budget(self, rubric: Rubric) -> int:
        """Max new tokens for an answer to `rubric`: the explicit budget, else the rubric's."""
        return self.max_new_tokens or rubric.generation.max_new_tokens

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        src: str | Path,
        *,
        device: str = "cpu",
        dtype: Any = None,
        max_pixels: int | None = None,
        max_new_tokens: int | None = None,
        rubrics: str | RubricPack | None = None,
    ) -> Critic:
        """Load a critic from a HF id, a local directory or a `file://`/`s3://` URI of a published directory.

        `dtype`: a torch dtype or its name ("bfloat16"); None keeps the checkpoint's. `max_pixels`: per-image
        pixel budget (None: the pack's, else the processor's). `rubrics`: the rubric pack (None: firm-v1); a
        warning is logged when the critic was trained with another pack. The model is put in eval mode.
        """
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        _check_device(device)
        pack = load_pack(rubrics)
        path = resolve_model_source(src)
        if isinstance(dtype, str) and dtype != "auto":
            resolved = getattr(torch, dtype, None)
            if not isinstance(resolved, torch.dtype):
                raise ConfigError(f"unknown dtype {dtype!r}; e.g. float32, bfloat16, float16")
            dtype = resolved
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:  # missing/unreadable config.json, or one without a model_type
            raise InputError(f"critic model {src}: cannot load its config ({exc})") from None
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        except ValueError as exc:  # e.g. a text-only or unknown architecture
            raise ConfigError(f"critic model {src}: not an image-text-to-text model ({exc})") from None
        except OSError as exc:  # e.g. config.json without weights
            raise InputError(f"critic model {src}: cannot load its weights ({exc})") from None
        model = model.to(device).eval()
        processor = load_processor(path, config.model_type)
        warn_if_mismatched(str(src), path if Path(path).is_dir() else None, pack)
        return cls(
            model,
            processor,
            max_pixels=max_pixels,
            max_new_tokens=max_new_tokens,
            rubrics=pack,
            name=str(src),
        )

    def _digit_ids(self) -> list[int]:
        ids = []
        for d in DIGITS:
            enc = self.tokenizer.encode(d, add_special_tokens=False)
            if len(enc) != 1:
                raise ConfigError(f"critic tokenizer splits the digit {d!r} into {len(enc)} tokens")
            ids.append(enc[0])
        return ids

    # ------------------------------------------------------------------------------------------------ judging

    def judge(
        self,
        requests: Sequence[CriticRequest],
        readout: Readout = "text",
        batch_size: int = 16,
        progress: bool = False,
        confidence: bool = True,
    ) -> list[Judgement]:
        """Judge `requests` in batches of `batch_size` (one greedy generate call per batch, left padding).

        All images are loaded and checked before anything runs, so bad input fails fast and loses nothing.
        `confidence=False` skips recording the digit logits with the text readout (no `Judgement.confidence`).
        """
        if readout not in ("text", "expected"):
            raise InputError(f"unknown readout {readout!r}; expected 'text' or 'expected'")
        if not requests:
            return []
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        requests = [r if isinstance(r, CriticRequest) else CriticRequest.model_validate(r) for r in requests]
        prepared = [self._prepare(r, i) for i, r in enumerate(requests)]
        out: list[Judgement] = []
        batches = [prepared[i : i + batch_size] for i in range(0, len(prepared), batch_size)]
        with _maybe_progress(progress, len(prepared), f"judging with {self.name}") as advance:
            for batch in batches:
                out.extend(self._judge_batch(batch, readout, confidence))
                advance(len(batch))
        return out

    def _prepare(self, req: CriticRequest, index: int) -> tuple[CriticRequest, str, list[Any]]:
        """(request, chat prompt, images in placeholder order) — the rubric's codec and pixel bounds applied."""
        who = req.sample_id or f"#{index}"
        rubric = self.rubric(req.task, req.axis)
        names = ("source image", "edited image") if req.task == "edit" else ("image",)
        loaded = []
        for name, src in zip(names, req.images, strict=True):
            label = f"{name} of sample {who}" + (f" ({src})" if isinstance(src, str | Path) else "")
            loaded.append(load_image(src, name=label, max_decode_pixels=self.max_decode_pixels))
        rule = self.pixel_rule(rubric)
        images = [rule.fit(img) for img in encode_images(rubric, loaded)]
        messages = build_messages(rubric, images, **req.fields())
        return req, render_prompt(self.processor, messages), message_images(messages)

    def _encode(self, prompts: list[str], images: list[Any], size: dict[str, int] | None = None) -> Any:
        enc = self.processor(
            text=prompts,
            images=images,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            size=size or {"shortest_edge": self.factor**2, "longest_edge": self.max_pixels},
        )
        return enc.to(self.device)

    def _batch_size(self, batch: list[tuple[CriticRequest, str, list[Any]]]) -> dict[str, int]:
        """Processor size bounds loose enough for every image of the batch (each was already fitted to its own)."""
        bounds = [self.pixel_bounds(self.rubric(req.task, req.axis)) for req, _, _ in batch]
        return {"shortest_edge": min(b[0] for b in bounds), "longest_edge": max(b[1] for b in bounds)}

    def generate_texts(
        self, prompts: list[str], images: list[Any], *, max_new_tokens: int | None = None
    ) -> list[str]:
        """Greedy answers for already-rendered chat prompts (`firm.critic.messages.render_prompt`); `images` are
        the prompts' images in order, already sized with `pixel_rule(...).fit`. The building block for serving the
        critic behind other protocols (e.g. an OpenAI-compatible chat endpoint)."""
        gc = self._generation_config(max_new_tokens or self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        enc = self._encode(prompts, images)
        with self._torch.inference_mode():
            out = self.model.generate(**enc, generation_config=gc)
        new = out.sequences[:, enc["input_ids"].shape[1] :].tolist()
        return [self.tokenizer.decode(self._trim(ids), skip_special_tokens=True) for ids in new]

    def _generation_config(self, max_new_tokens: int) -> Any:
        gc = copy.deepcopy(self.model.generation_config)
        gc.do_sample = False
        gc.temperature = None
        gc.top_p = None
        gc.top_k = None
        gc.num_beams = 1
        gc.max_new_tokens = max_new_tokens
        gc.return_dict_in_generate = True
        gc.pad_token_id = self.tokenizer.pad_token_id
        return gc

    def _judge_batch(
        self, batch: list[tuple[CriticRequest, str, list[Any]]], readout: Readout, confidence: bool = True
    ) -> list[Judgement]:
        torch = self._torch
        want = readout == "expected"
        record = want or confidence
        prompts = [p for _, p, _ in batch]
        images = [im for _, _, ims in batch for im in ims]
        enc = self._encode(prompts, images, self._batch_size(batch))
        rubrics = [self.rubric(req.task, req.axis) for req, _, _ in batch]
        limits = [self.answer_budget(r) for r in rubrics]
        # the expected readout records only the five digit logits of each step, never (B, T, vocab) logits
        recorder = _DigitLogits(self.digit_ids) if record else None
        stop = _RowBudgets(enc["input_ids"].shape[1], limits)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                generation_config=self._generation_config(max(limits)),
                logits_processor=_processors(recorder),
                stopping_criteria=_stopping(stop),
            )
        new = out.sequences[:, enc["input_ids"].shape[1] :].tolist()
        logits = recorder.stacked() if recorder is not None else None  # (B, T, 5)
        results: list[Judgement] = []
        forced: list[int] = []
        for row, (req, _, _) in enumerate(batch):
            ids = self._trim(new[row][: limits[row]])
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            parsed = parse_answer(rubrics[row].answer_format, text)
            if not parsed.ok and len(ids) >= limits[row]:  # cut off at the budget before a score was written
                parsed = parsed.model_copy(update={"status": TRUNCATED})
            expected: float | None = None
            conf = None
            parsed_from = parsed.parsed_from
            dists = self._generation_dists(ids, text, parsed, logits[row]) if logits is not None else None
            if dists is not None:
                if want:
                    expected = _expected_min(dists)
                if confidence and parsed.ok and parsed.score is not None:
                    conf = _confidence(dists, parsed.score)
            elif want:
                forced.append(row)
                parsed_from = f"{parsed_from}+{TEACHER_FORCED}" if parsed.ok else TEACHER_FORCED
            results.append(
                Judgement(
                    task=req.task,  # type: ignore[arg-type]
                    axis=req.axis,  # type: ignore[arg-type]
                    status=parsed.status,
                    score=parsed.score if parsed.ok else None,
                    expected_score=expected,
                    confidence=conf,
                    reasoning=parsed.reasoning,
                    raw_text=text,
                    parsed_from=parsed_from,
                    sample_id=req.sample_id,
                )
            )
        if forced:
            all_dists = self._teacher_forced_dists([batch[r] for r in forced])
            for row, dists in zip(forced, all_dists, strict=True):
                update: dict[str, Any] = {"expected_score": _expected_min(dists)}
                score = results[row].score
                if confidence and results[row].ok and score is not None:
                    update["confidence"] = _confidence(dists, score)
                results[row] = results[row].model_copy(update=update)
        return results

    def _trim(self, ids: list[int]) -> list[int]:
        for i, t in enumerate(ids):
            if t in self.stop_ids:
                return ids[:i]
        return ids

    # ------------------------------------------------------------------------------------------------ expected

    def _token_at(self, ids: list[int], text: str, char: int) -> int | None:
        """Index of the generated token that produced `text[char]`, if that token is exactly one score digit.

        The first token whose decoded prefix reaches past `char` is found by bisection (decoded prefixes only
        grow), so locating a digit costs O(log T) decodes, not O(T); the prefix before it is then checked."""
        dec = self.tokenizer.decode
        lo, hi = 0, len(ids)  # the answer is the smallest t with len(dec(ids[: t + 1])) > char, else None
        while lo < hi:
            mid = (lo + hi) // 2
            if len(dec(ids[: mid + 1], skip_special_tokens=True)) > char:
                hi = mid
            else:
                lo = mid + 1
        t = lo
        if t >= len(ids):
            return None
        before = dec(ids[:t], skip_special_tokens=True)
        if before == text[:char] and ids[t] in self.digit_ids:
            return t
        return None

    def _digit_probs(self, digit_logits: Any) -> Any:
        """Softmax over the five digit logits ("1".."5") of one position."""
        return self._torch.softmax(digit_logits.float(), dim=-1)

    def _generation_dists(
        self, ids: list[int], text: str, parsed: ParseResult, logits: Any
    ) -> list[Any] | None:
        """The digit distribution(s) where the answer wrote its score digit(s), or None where they cannot be
        located (not parsed, or a digit merged into another token)."""
        if not parsed.ok or not parsed.score_spans:
            return None
        probs = []
        for start, end in parsed.score_spans:
            if end - start != 1:
                return None
            t = self._token_at(ids, text, start)
            if t is None:
                return None
            probs.append(self._digit_probs(logits[t]))
        return probs

    def _expected_from_generation(
        self, ids: list[int], text: str, parsed: ParseResult, logits: Any
    ) -> float | None:
        dists = self._generation_dists(ids, text, parsed, logits)
        return None if dists is None else _expected_min(dists)

    def _teacher_forced_dists(self, batch: list[tuple[CriticRequest, str, list[Any]]]) -> list[list[Any]]:
        """Force the canonical answer skeleton after each prompt and read the digit distribution(s) there."""
        torch = self._torch
        fmts = [self.rubric(req.task, req.axis).answer_format for req, _, _ in batch]
        prefixes = [CANONICAL_PREFIX[f] for f in fmts]
        n_pos = [3 if f == "quality" else 1 for f in fmts]
        images = [im for _, _, ims in batch for im in ims]
        probs: list[list[Any]] = [[] for _ in batch]
        for step in range(max(n_pos)):
            prompts = [p + prefixes[i] for i, (_, p, _) in enumerate(batch)]
            enc = self._encode(prompts, images, self._batch_size(batch))
            with torch.inference_mode():
                last = self.model(**enc, logits_to_keep=1).logits[:, -1, self.digit_ids]
            for i in range(len(batch)):
                if step < n_pos[i]:
                    p = self._digit_probs(last[i])
                    probs[i].append(p)
                    prefixes[i] += DIGITS[int(p.argmax())] + ", "
        return probs

    # ------------------------------------------------------------------------------------------------ tasks

    def score_edit(
        self,
        items: Sequence[EditInput | EditSample],
        readout: Readout = "text",
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[tuple[Judgement, Judgement]]:
        """(execution, consistency) judgements per edit; both axes of all edits go through the same batched
        generate calls (2 × len(items) requests)."""
        edits = [EditInput.of(it) for it in items]
        reqs = [
            CriticRequest(
                task="edit",
                axis=axis,
                images=[e.source, e.edited],
                instruction=e.instruction,
                sample_id=e.sample_id,
            )
            for e in edits
            for axis in ("execution", "consistency")
        ]
        js = self.judge(reqs, readout=readout, batch_size=batch_size, progress=progress)
        return [(js[2 * i], js[2 * i + 1]) for i in range(len(edits))]

    def score_gen(
        self,
        items: Sequence[GenInput | GenSample],
        quality: bool = True,
        readout: Readout = "text",
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[tuple[Judgement, Judgement | None]]:
        """(instruction, quality-or-None) judgements per generated image, all in the same batched calls."""
        gens = [GenInput.of(it) for it in items]
        axes = ("instruction", "quality") if quality else ("instruction",)
        reqs = [
            CriticRequest(task="gen", axis=axis, images=[g.image], prompt=g.prompt, sample_id=g.sample_id)
            for g in gens
            for axis in axes
        ]
        js = self.judge(reqs, readout=readout, batch_size=batch_size, progress=progress)
        k = len(axes)
        return [(js[k * i], js[k * i + 1] if quality else None) for i in range(len(gens))]

    def edit_rewards(
        self,
        items: Sequence[EditInput | EditSample],
        config: Any = None,
        policy: str = "skip",
        batch_size: int = 16,
    ) -> list[tuple[RewardBreakdown, tuple[Judgement, Judgement]]]:
        """Score edits and combine each (execution, consistency) pair with `edit_reward` (CME by default).
        The readout is `config.readout` (an `EditRewardConfig`)."""
        from firm.rewards.formulas import EditRewardConfig, edit_reward

        config = config or EditRewardConfig()
        pairs = self.score_edit(items, readout=config.readout, batch_size=batch_size)
        return [(edit_reward(e, c, config, policy), (e, c)) for e, c in pairs]

    def gen_rewards(
        self,
        items: Sequence[GenInput | GenSample],
        quality: bool = True,
        config: Any = None,
        policy: str = "skip",
        batch_size: int = 16,
    ) -> list[tuple[RewardBreakdown, tuple[Judgement, Judgement | None]]]:
        """Score generated images and combine with `gen_reward` (QMA when `quality`, else instruction only)."""
        from firm.rewards.formulas import GenRewardConfig, gen_reward

        config = config or GenRewardConfig()
        pairs = self.score_gen(items, quality=quality, readout=config.readout, batch_size=batch_size)
        return [(gen_reward(i, q, config, policy), (i, q)) for i, q in pairs]


class _DigitLogits:
    """A logits processor that records the digit-token logits of every generation step and changes nothing.

    It runs after the checkpoint's own processors, so it sees the scores greedy decoding chose from (the raw
    logits unless the checkpoint sets e.g. a repetition penalty)."""

    def __init__(self, digit_ids: list[int]) -> None:
        self.digit_ids = digit_ids
        self.steps: list[Any] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.steps.append(scores[:, self.digit_ids].float())  # stays on the device: no sync per step
        return scores

    def stacked(self) -> Any:
        import torch

        return torch.stack(self.steps, dim=1).cpu()  # (batch, generated tokens, 5)


class _RowBudgets:
    """A stopping criterion that ends each row at its own answer budget (rubrics in one batch may differ)."""

    def __init__(self, prompt_len: int, limits: list[int]) -> None:
        self.prompt_len = prompt_len
        self.limits = limits
        self._t: Any = None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if self._t is None:
            self._t = torch.tensor(self.limits, device=input_ids.device)
        return (input_ids.shape[1] - self.prompt_len) >= self._t


def _stopping(budgets: _RowBudgets) -> Any:
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([budgets])


def _processors(recorder: _DigitLogits | None) -> Any:
    from transformers import LogitsProcessorList

    return LogitsProcessorList([recorder] if recorder is not None else [])


def _confidence(dists: list[Any], score: int | list[int]) -> Any:
    """`Judgement.confidence` from the located digit distributions (torch) and the parsed score."""
    as_lists = [[float(x) for x in d.tolist()] for d in dists]
    if isinstance(score, list) and len(as_lists) != len(score):
        return None
    if isinstance(score, int) and len(as_lists) != 1:
        return None
    return judgement_confidence(as_lists, score)


def _expected_min(probs: list[Any]) -> float:
    """E[min] of independent scores on 1..5 given their digit distributions (one distribution: its mean)."""
    survival = None  # P(min >= k) for k = 1..5
    for p in probs:
        s = p.flip(0).cumsum(0).flip(0)  # P(s >= k)
        survival = s if survival is None else survival * s
    assert survival is not None
    return float(survival.sum().clamp(1.0, 5.0))


@contextlib.contextmanager
def _maybe_progress(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Judging progress on stderr (a bar on a terminal, periodic lines elsewhere); a no-op when not enabled."""
    from firm.progress import Progress

    with Progress(label, total=total, unit="requests", enabled=enabled) as prog:
        yield prog.advance
