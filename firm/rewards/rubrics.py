"""Rubric packs: the prompts a FIRM critic is asked with, as versioned, content-hashed data.

A *pack* (YAML; `firm.rewards.packs` loads it) holds one `Rubric` per (task, axis, role):

- task `edit`, axes `execution` and `consistency`: two images (source, edited) + the instruction;
- task `gen`, axis `instruction`: one image + the prompt; axis `quality`: one image;
- role `student` is what a critic sees at inference and in SFT; role `teacher` is the curation variant that also
  receives a *difference report* (edits, "difference-first") or a *checklist plan* (generation, "plan-then-score").
  A pack must have every student rubric; teacher rubrics are optional (only curation needs them).

Each rubric carries everything that decides what the model is fed and how long it may answer:

- `template` (and an optional `system` template): Python format syntax over the placeholders in `PLACEHOLDERS`,
  `{{`/`}}` for literal braces; `placeholders` must list exactly the names the templates use, and the ones the
  (task, axis, role) needs (`REQUIRED`) must be among them;
- `answer_format` (which parser reads the answer) and `n_images`;
- `layout`: where the images go in the user turn (`before_text` / `after_text`) and their order (`source, edited`);
- `images`: the codec the images pass through before the processor (the official reward clients send JPEG), and
  optional pixel bounds (None: the processor's own);
- `generation`: the answer budget (`max_new_tokens`) and the sampling temperature (0 = greedy, the only mode
  FIRM's critic decodes with, as the official servers do).

FIRM's own pack is `firm-v1` (`firm/rewards/rubric_packs/firm-v1.yaml`); the official templates become a pack through
`firmctl rubrics import-official` (`firm.rewards.official`), never by copying them into FIRM.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firm.errors import ConfigError, InputError

Role = Literal["student", "teacher"]
AnswerFormat = Literal["edit", "gen", "quality"]
TaskName = Literal["edit", "gen"]
AxisName = Literal["execution", "consistency", "instruction", "quality"]

DEFAULT_PACK = "firm-v1"
# Every placeholder a template may use. `requirement` is the official servers' optional per-sample extra text
# (metadata "requirement", empty when absent).
PLACEHOLDERS = ("instruction", "prompt", "requirement", "difference_report", "plan")
N_IMAGES = {"edit": 2, "gen": 1}
ANSWER_FORMAT = {"execution": "edit", "consistency": "edit", "instruction": "gen", "quality": "quality"}
AXES = {"edit": ("execution", "consistency"), "gen": ("instruction", "quality")}
_CONTEXT = {"edit": "difference_report", "gen": "plan"}


def required_placeholders(task: str, axis: str, role: str) -> set[str]:
    """The fields a rubric must use: the instruction (edits), the prompt (gen/instruction), and for teacher
    rubrics the difference report (edits) or the plan (gen/instruction). Quality needs none."""
    need: set[str] = set()
    if task == "edit":
        need.add("instruction")
    elif axis == "instruction":
        need.add("prompt")
    if role == "teacher" and axis != "quality":
        need.add(_CONTEXT[task])
    return need


def template_fields(text: str) -> list[str]:
    """The placeholder names a format template uses, in order; raises ValueError on malformed braces or on
    attribute/index/conversion syntax (a template only substitutes plain names)."""
    names: list[str] = []
    for _lit, name, spec, conv in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(
                f"placeholder {{{name}}} is not a plain name (write {{{{ and }}}} for literal braces)"
            )
        if spec or conv:
            raise ValueError(
                f"placeholder {{{name}}} uses a format spec or conversion; only plain names are allowed"
            )
        names.append(name)
    return names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Layout(_Strict):
    """How the user turn is laid out: the images before or after the text, and the order of an edit's images."""

    images: Literal["before_text", "after_text"] = "before_text"
    image_order: tuple[Literal["source", "edited"], ...] = ("source", "edited")


class ImagePolicy(_Strict):
    """What happens to each image before the processor sees it."""

    codec: Literal["none", "png", "jpeg"] = Field(
        default="none", description="round-trip through this codec first (the official clients send JPEG)"
    )
    jpeg_quality: int = Field(
        default=75, ge=1, le=100, description="PIL's default, what the official clients use"
    )
    min_pixels: int | None = Field(default=None, ge=1, description="None: the processor's own lower bound")
    max_pixels: int | None = Field(default=None, ge=1, description="None: the processor's own upper bound")


class Generation(_Strict):
    """The critic's decoding settings for this rubric."""

    max_new_tokens: int = Field(ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _greedy(self) -> Generation:
        if self.temperature != 0.0:
            raise ValueError(
                "temperature: must be 0 (FIRM's critic decodes greedily, as the official servers do)"
            )
        return self


class Rubric(_Strict):
    """One prompt of a pack for (task, axis, role)."""

    task: TaskName
    axis: AxisName
    role: Role
    n_images: int
    answer_format: AnswerFormat
    template: str
    system: str | None = None
    placeholders: tuple[str, ...] = ()
    layout: Layout = Field(default_factory=Layout)
    images: ImagePolicy = Field(default_factory=ImagePolicy)
    generation: Generation
    pack: str = Field(default="", description="the pack's name (set when the pack is loaded)")

    @property
    def key(self) -> str:
        return f"{self.task}.{self.axis}.{self.role}"

    @property
    def id(self) -> str:
        return f"{self.key}.{self.pack}" if self.pack else self.key

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        if self.axis not in AXES[self.task]:
            raise ValueError(f"axis {self.axis!r} does not belong to task {self.task!r}")
        if self.n_images != N_IMAGES[self.task]:
            raise ValueError(
                f"n_images: a {self.task} rubric has {N_IMAGES[self.task]} image(s), not {self.n_images}"
            )
        if self.answer_format != ANSWER_FORMAT[self.axis]:
            raise ValueError(
                f"answer_format: the {self.axis} axis is answered in the {ANSWER_FORMAT[self.axis]!r} format"
            )
        used: list[str] = []
        for where, text in (("template", self.template), ("system", self.system)):
            if text is None:
                continue
            try:
                used += template_fields(text)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        unknown = sorted(set(used) - set(PLACEHOLDERS))
        if unknown:
            raise ValueError(f"template: unknown placeholder(s) {unknown}; known: {', '.join(PLACEHOLDERS)}")
        if set(self.placeholders) != set(used):
            raise ValueError(
                f"placeholders: lists {sorted(set(self.placeholders))} but the templates use {sorted(set(used))}"
            )
        missing = sorted(required_placeholders(self.task, self.axis, self.role) - set(used))
        if missing:
            raise ValueError(
                f"template: renders without {', '.join('{' + m + '}' for m in missing)}, which a "
                f"{self.task}/{self.axis} {self.role} rubric must show the critic"
            )
        if self.n_images == 2 and sorted(self.layout.image_order) != ["edited", "source"]:
            raise ValueError("layout.image_order: an edit rubric orders both images, e.g. [source, edited]")
        return self

    def fields_for(
        self,
        *,
        instruction: str | None = None,
        prompt: str | None = None,
        requirement: str | None = None,
        difference_report: str | None = None,
        plan: str | None = None,
    ) -> dict[str, str]:
        """The values of this rubric's placeholders; a required one that is missing or empty raises `InputError`."""
        given = {
            "instruction": instruction,
            "prompt": prompt,
            "requirement": requirement,
            "difference_report": difference_report,
            "plan": plan,
        }
        need = required_placeholders(self.task, self.axis, self.role)
        out: dict[str, str] = {}
        for name in self.placeholders:
            value = given[name]
            if name in need and (value is None or not str(value).strip()):
                raise InputError(f"rubric {self.id} needs a non-empty {name}")
            out[name] = "" if value is None else str(value).strip()
        return out

    def render(self, **fields: str | None) -> str:
        """The user-turn text. Raises `InputError` when a required field is missing or empty."""
        return self.template.format(**self.fields_for(**fields))

    def render_system(self, **fields: str | None) -> str | None:
        """The system-turn text, or None when the rubric has no system turn."""
        return None if self.system is None else self.system.format(**self.fields_for(**fields))


class RubricPack(_Strict):
    """A named, versioned set of rubrics. `sha256` hashes its content (canonical JSON, provenance excluded), so
    outputs can record exactly which prompts produced them."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    version: str = Field(min_length=1)
    description: str = ""
    trained_critics: tuple[str, ...] = Field(
        default=(), description="released critics trained with exactly these prompts (HF ids or names)"
    )
    source: dict[str, Any] = Field(
        default_factory=dict, description="provenance (the importer records what it read)"
    )
    rubrics: tuple[Rubric, ...]

    @model_validator(mode="after")
    def _check(self) -> RubricPack:
        seen: set[str] = set()
        for r in self.rubrics:
            if r.key in seen:
                raise ValueError(f"rubrics: {r.key} appears twice")
            seen.add(r.key)
        missing = [
            f"{t}.{a}.student" for t, axes in AXES.items() for a in axes if f"{t}.{a}.student" not in seen
        ]
        if missing:
            raise ValueError(f"rubrics: missing {', '.join(missing)} (every student rubric is required)")
        # the rubrics carry their pack's name so that their ids say where they come from
        object.__setattr__(
            self, "rubrics", tuple(r.model_copy(update={"pack": self.name}) for r in self.rubrics)
        )
        return self

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    @property
    def ref(self) -> str:
        """`name@sha256[:12]`: how outputs name the pack they were made with."""
        return f"{self.name}@{self.sha256[:12]}"

    def canonical_json(self) -> str:
        """The hashed content: everything but `source` (where a pack was read from does not change its prompts)."""
        data = self.model_dump(mode="json", exclude={"source"})
        for r in data["rubrics"]:
            r.pop("pack", None)
        return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def get(self, task: str, axis: str, role: str = "student") -> Rubric:
        """The rubric for (task, axis, role); an unknown one raises `InputError` naming the pack."""
        key = f"{task}.{axis}.{role}"
        for r in self.rubrics:
            if r.key == key:
                return r
        known = ", ".join(r.key for r in self.rubrics)
        raise InputError(f"rubric pack {self.name}: no rubric {key!r}; it has: {known}")

    def by_id(self, rubric_id: str) -> Rubric:
        """Look up `task.axis[.role[.pack]]` (role defaults to student). A pack part must name this pack (the
        legacy `v1` names firm-v1)."""
        parts = rubric_id.split(".")
        if not 2 <= len(parts) <= 4:
            raise InputError(f"malformed rubric id {rubric_id!r}; expected task.axis[.role[.pack]]")
        if len(parts) == 4 and parts[3] != self.name and not (parts[3] == "v1" and self.name == DEFAULT_PACK):
            raise InputError(
                f"rubric id {rubric_id!r} names pack {parts[3]!r}, but this pack is {self.name!r}"
            )
        return self.get(parts[0], parts[1], parts[2] if len(parts) > 2 else "student")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "rubrics": [r.key for r in self.rubrics],
            "trained_critics": list(self.trained_critics),
        }


def pack_from_data(data: Any, where: str) -> RubricPack:
    """Validate pack data (parsed YAML); an error names the pack and the field in one line."""
    name = data.get("name", where) if isinstance(data, dict) else where
    try:
        return RubricPack.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        rubrics = data.get("rubrics") if isinstance(data, dict) else None
        if len(loc) >= 2 and loc[0] == "rubrics" and isinstance(loc[1], int) and isinstance(rubrics, list):
            item = rubrics[loc[1]] if loc[1] < len(rubrics) else {}
            if isinstance(item, dict):
                loc[1] = ".".join(str(item.get(k, "?")) for k in ("task", "axis", "role"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        # model-level checks say which field they mean as "field: message"
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", head):
            loc.append(head)
            msg = rest
        field = ".".join(str(p) for p in loc) or "pack"
        raise ConfigError(f"rubric pack {name} ({where}): {field}: {msg}") from None
