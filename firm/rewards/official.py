"""Import the official FIRM prompt templates as a rubric pack, without copying them into FIRM.

`firm.rubric_store.import_official(src)` reads the two `prompt_template.py` files of the public FIRM-Reward
repository from a local checkout or from a URL prefix (e.g. a raw-file URL pinned to a commit); `official_pack` here,
which reads nothing itself, parses them with `ast` (literal strings, names of earlier strings and `+` only; nothing
is executed), maps their constants to (task, axis), converts their placeholders, and returns a pack whose `source`
records the sha256 of every file read and one digest over all of them (`--expect-sha256` pins it).

What the official reward servers do, and the pack reproduces (checked against `editing/reward_server/
reward_server_qwen3_vl_8b_sft.py`, `editing/flow_grpo/rewards.py` and `generation/flow_grpo/reward_model_server.py`):

| constant | (task, axis) | server formatting | answer budget |
|---|---|---|---|
| `SCORE_EXECUTION` (editing) | edit / execution | `.format(prompt=instruction, requirement=...)` | 256 tokens |
| `SCORE_CONSISTENCY` (editing) | edit / consistency | same | 256 tokens |
| `SCORE` (generation) | gen / instruction | formatted (it contains `{prompt}`) | `REWARD_MAX_TOKENS`, 8192 |
| `Quality_PROMPT` (generation) | gen / quality | used verbatim (no `{prompt}`/`{requirement}`) | 8192 |

- Messages: one user turn, no system turn; the images first (edits: the source — the client's `ref_images` — then
  the edited image), then the text. Decoding: temperature 0.
- Images: the clients send JPEG (PIL's default quality, 75) and the servers decode it, so the pack round-trips
  every image through JPEG; pixel bounds are the processor's own (the servers pass no `mm_processor_kwargs`).
- Placeholders: `{prompt}` is the instruction for edits and the prompt for generation; `{requirement}` is the
  per-sample "requirement" metadata (empty when absent); a verbatim template has its braces escaped.
- Not imported: `SCORE_LOGIT` (the editing server's non-CoT 0–5 logits baseline, not a FIRM critic prompt) and
  `MODEL_PROMPT` (a part of `SCORE`). The official code releases no curation (teacher) prompts, so the pack has
  student rubrics only.
"""

from __future__ import annotations

import ast
import hashlib
import string
from collections.abc import Callable
from typing import Any

from firm.errors import InputError
from firm.rewards.packs import RELEASED_CRITICS
from firm.rewards.rubrics import ANSWER_FORMAT, N_IMAGES, RubricPack, pack_from_data

EDIT_FILE = "editing/reward_server/prompt_template.py"
GEN_FILE = "generation/flow_grpo/prompt_template.py"
# constant → (task, axis, formatted by the server?, answer budget)
CONSTANTS: dict[str, dict[str, tuple[str, str, bool | None, int]]] = {
    EDIT_FILE: {
        "SCORE_EXECUTION": ("edit", "execution", True, 256),
        "SCORE_CONSISTENCY": ("edit", "consistency", True, 256),
    },
    GEN_FILE: {
        # the generation server formats a template only when it contains {prompt} or {requirement}
        "SCORE": ("gen", "instruction", None, 8192),
        "Quality_PROMPT": ("gen", "quality", None, 8192),
    },
}
NOT_IMPORTED = {
    "SCORE_LOGIT": "the editing server's non-CoT logits baseline, not a FIRM critic prompt",
    "MODEL_PROMPT": "a part of SCORE",
}
DEFAULT_NAME = "firm-official"
JPEG_QUALITY = 75  # PIL's default, what the official clients' `img.save(buffer, format="JPEG")` uses


def string_constants(source: str, where: str) -> dict[str, str]:
    """Module-level `NAME = <string expression>` assignments, evaluated without executing anything: string
    literals, names of earlier string constants and `+`. Anything else is skipped."""
    try:
        tree = ast.parse(source, filename=where)
    except SyntaxError as exc:
        raise InputError(
            f"import-official: {where} is not valid Python ({exc.msg}, line {exc.lineno})"
        ) from None
    values: dict[str, str] = {}

    def value(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return values.get(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = value(node.left), value(node.right)
            return None if left is None or right is None else left + right
        return None

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            v = value(stmt.value)
            if v is not None:
                values[stmt.targets[0].id] = v
    return values


def convert_template(text: str, task: str, formatted: bool, where: str) -> tuple[str, list[str]]:
    """The official template in the pack's syntax: `{prompt}` → `{instruction}` (edits) / `{prompt}` (generation),
    `{requirement}` kept; a template the server uses verbatim gets its braces escaped."""
    if not formatted:
        return text.replace("{", "{{").replace("}", "}}"), []
    rename = {"prompt": "instruction" if task == "edit" else "prompt", "requirement": "requirement"}
    out: list[str] = []
    used: list[str] = []
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise InputError(f"import-official: {where}: malformed braces ({exc})") from None
    for literal, name, spec, conv in parts:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if name not in rename or spec or conv:
            raise InputError(f"import-official: {where}: unknown official placeholder {{{name}}}")
        out.append("{" + rename[name] + "}")
        if rename[name] not in used:
            used.append(rename[name])
    return "".join(out), used


def official_pack(
    read: Callable[[str], bytes], src: str, *, name: str = DEFAULT_NAME, expect_sha256: str | None = None
) -> RubricPack:
    """Build the official pack from the files `read(rel)` returns for each path of `CONSTANTS` (see the module
    docstring); `src` is recorded as where they came from. The reading is the caller's:
    `firm.rubric_store.import_official` reads a checkout directory or a URL prefix."""
    files: dict[str, str] = {}
    rubrics: list[dict[str, Any]] = []
    for rel, wanted in CONSTANTS.items():
        raw = read(rel)
        files[rel] = hashlib.sha256(raw).hexdigest()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"import-official: {rel} is not UTF-8 text") from None
        consts = string_constants(text, rel)
        for const, (task, axis, formatted, budget) in wanted.items():
            if const not in consts:
                raise InputError(
                    f"import-official: {rel} defines no string constant {const} (for {task}/{axis})"
                )
            tpl = consts[const]
            if formatted is None:
                formatted = "{prompt}" in tpl or "{requirement}" in tpl
            template, placeholders = convert_template(tpl, task, formatted, f"{rel}:{const}")
            layout: dict[str, Any] = {"images": "before_text"}
            if N_IMAGES[task] == 2:
                layout["image_order"] = ["source", "edited"]
            rubrics.append(
                {
                    "task": task,
                    "axis": axis,
                    "role": "student",
                    "n_images": N_IMAGES[task],
                    "answer_format": ANSWER_FORMAT[axis],
                    "template": template,
                    "placeholders": placeholders,
                    "layout": layout,
                    "images": {"codec": "jpeg", "jpeg_quality": JPEG_QUALITY},
                    "generation": {"max_new_tokens": budget, "temperature": 0.0},
                }
            )
    digest = source_digest(files)
    if expect_sha256 is not None and expect_sha256.strip().lower() != digest:
        raise InputError(
            f"import-official: what was read from {src} has digest {digest}, not the expected {expect_sha256} "
            "(--expect-sha256); the templates changed or the source is not the one pinned"
        )
    data = {
        "name": name,
        "version": f"official-{digest[:12]}",
        "description": "The official FIRM-Reward prompt templates, imported by `firmctl rubrics import-official`.",
        "trained_critics": sorted(RELEASED_CRITICS.values()),
        "source": {"kind": "firm-official", "src": src, "files": files, "sha256": digest},
        "rubrics": rubrics,
    }
    return pack_from_data(data, f"import-official {src}")


def source_digest(files: dict[str, str]) -> str:
    """One sha256 over the files read: their paths and sha256s, sorted."""
    lines = "".join(f"{path} {sha}\n" for path, sha in sorted(files.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


HEADER = """# Rubric pack imported by `firmctl rubrics import-official` from {src}
# (the official FIRM-Reward prompt templates; source digest {digest}).
# The template texts are the official project's, not FIRM's. Regenerate with:
#   firmctl rubrics import-official {src} --expect-sha256 {digest}
"""
