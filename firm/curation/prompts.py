"""The stage-1 curation prompts (difference report, planner checklist, instruction rewriting) as versioned data.

They live in `firm/curation/prompts.yaml` (or any YAML path with the same schema); `load_prompts()` validates them
and `CurationPrompts.sha256` hashes their content, recorded in every curated dataset's `stats.json`. Stage 2 uses the
rubric pack's teacher rubrics (`load_pack(name).get(task, axis, "teacher")`), never these.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from firm.errors import ConfigError, InputError
from firm.rewards.rubrics import template_fields

BUILTIN = Path(__file__).with_name("prompts.yaml")
NAMES = ("difference_report", "plan", "rewrite_instruction")


class CurationPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    images: int = Field(ge=0, le=2, description="images placed before the text (source, edited)")
    placeholders: tuple[str, ...] = ()
    max_new_tokens: int = Field(ge=1, le=32768)
    template: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CurationPrompt:
        try:
            used = set(template_fields(self.template))
        except ValueError as exc:
            raise ValueError(f"template: {exc}") from None
        if used != set(self.placeholders):
            raise ValueError(
                f"placeholders: lists {sorted(self.placeholders)} but the template uses {sorted(used)}"
            )
        return self

    def messages(self, images: list[Any] | None = None, **fields: str) -> list[dict[str, Any]]:
        """One user turn: the images (in order), then the rendered text. A missing or empty field raises."""
        imgs = list(images or [])
        if len(imgs) != self.images:
            raise InputError(f"curation prompt needs {self.images} image(s), got {len(imgs)}")
        for name in self.placeholders:
            if not str(fields.get(name) or "").strip():
                raise InputError(f"curation prompt needs a non-empty {name}")
        text = self.template.format(**{k: str(fields[k]).strip() for k in self.placeholders})
        content = [{"type": "image", "image": im} for im in imgs] + [{"type": "text", "text": text}]
        return [{"role": "user", "content": content}]


class CurationPrompts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    version: str = Field(min_length=1)
    prompts: dict[str, CurationPrompt]

    @model_validator(mode="after")
    def _all(self) -> CurationPrompts:
        missing = [n for n in NAMES if n not in self.prompts]
        if missing:
            raise ValueError(f"prompts: missing {', '.join(missing)}")
        return self

    @property
    def sha256(self) -> str:
        text = json.dumps(
            self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def get(self, name: str) -> CurationPrompt:
        try:
            return self.prompts[name]
        except KeyError:
            raise InputError(f"curation prompts {self.name}: no prompt {name!r}") from None

    def summary(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def load_prompts(path: str | Path | None = None) -> CurationPrompts:
    """The curation prompts from `path` (None: the built-in `firm-curation-v1`); errors name the field."""
    p = Path(path) if path is not None else BUILTIN
    if not p.is_file():
        raise InputError(f"curation prompts {p}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
        return CurationPrompts.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"curation prompts {p}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(
            f"curation prompts {p}: {loc}: {str(err['msg']).removeprefix('Value error, ')}"
        ) from None
