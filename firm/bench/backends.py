"""Critic backends for FIRM-Bench: anything that turns bench items into `firm.schemas.Judgement`s.

`CriticBackend` is the one interface the runner sees (`judge(items, bench) -> list[Judgement]`, same order, one per
item, `sample_id` = item id, `raw_text` kept; `rubrics` names the rubric pack the critic is asked with, recorded in
the report). Implementations:

- `LocalCriticBackend` — the in-process `firm.critic.Critic` (HF id, local path, or `file://`/`s3://` URI).
- `OpenAICompatibleBackend` — an OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, SGLang, a commercial API)
  through FIRM's one chat client (`firm.llm.openai_client.OpenAIChatClient`, shared with the curation teachers):
  the same rubric prompt as the local critic (`firm.critic.messages.build_messages`, the pack's layout,
  codec and per-rubric answer budget), images sent as base64 PNG data URLs (after the pack's codec), bounded
  concurrency, retries with exponential backoff and jitter on connection errors,
  408/409/429 and 5xx; the answer is parsed with `firm.rewards.parsing.parse_answer`, so failures are `unparseable`, never a 0.
  Configuration: base URL, model and key as arguments or from `FIRM_OPENAI_BASE_URL`, `FIRM_OPENAI_MODEL`,
  `FIRM_OPENAI_API_KEY` (the key is only ever read from the environment or passed in; it is never logged).
- `RandomBackend` — a seeded uniform-random critic: the chance-level baseline a trained critic must beat.
- `TritonBackend` — the FIRM reward service (`triton://host:port[,host:port...]`) through
  `firm.serving.RewardClient`. The service answers per *sample* with a `RewardBreakdown` (both edit axes at once),
  so items are grouped by their inputs (images + instruction/prompt): each distinct edit is scored once and serves
  its execution and consistency items. Per item: `raw_scores[axis]` → `score` (the text readout's integer; an
  expected-readout float is rounded and kept as `expected_score`), a failed axis → its status from the breakdown
  (`unparseable:execution` → `unparseable`), `reasoning[axis]` → reasoning. The service does not return the
  critic's full text, so `raw_text` holds the breakdown's JSON. Its `rubrics` is the pack the server was exported
  with (read from the `firm_edit_reward` / `firm_gen_reward` config parameters).

`make_backend(spec)` parses the `--critic` argument of `firmctl bench run` (see its docstring for the schemes).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from firm.bench.loaders import Bench
from firm.bench.records import BenchItem
from firm.errors import FirmError, InputError
from firm.llm.openai_client import (  # noqa: F401  (image_data_url, RETRY_STATUS: re-exported)
    RETRY_STATUS,
    ChatResult,
    OpenAIChatClient,
    image_data_url,
    to_wire,
)
from firm.schemas import Judgement, Readout


@runtime_checkable
class CriticBackend(Protocol):
    """Judges bench items; returns one `Judgement` per item, in order, with `sample_id` = item id."""

    name: str
    rubrics: str

    def judge(self, items: Sequence[BenchItem], bench: Bench) -> list[Judgement]: ...

    def close(self) -> None: ...


ANSWER_STATUSES = ("unparseable", "out_of_range", "truncated")


def _fields(item: BenchItem) -> dict[str, str | None]:
    return {"instruction": item.instruction} if item.task == "edit" else {"prompt": item.prompt}


# ------------------------------------------------------------------------------------------------------- random
class RandomBackend:
    """Uniform random scores 1..5, deterministic per (seed, item id) so reruns and resumes agree."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.name = f"random(seed={seed})"
        self.rubrics = ""

    def judge(self, items: Sequence[BenchItem], bench: Bench) -> list[Judgement]:
        out = []
        for it in items:
            digest = hashlib.sha256(f"{self.seed}:{it.id}".encode()).digest()
            k = random.Random(digest).randint(1, 5)
            out.append(
                Judgement(
                    task=it.task,
                    axis=it.axis,
                    status="ok",
                    score=k,
                    raw_text=f"random score {k}",
                    parsed_from="random",
                    sample_id=it.id,
                )
            )
        return out

    def close(self) -> None:
        return None


# -------------------------------------------------------------------------------------------------- local critic
class LocalCriticBackend:
    """The in-process FIRM critic (`firm.critic.Critic.from_pretrained`)."""

    def __init__(
        self,
        model: str,
        *,
        readout: Readout = "text",
        batch_size: int = 8,
        device: str | None = None,
        max_new_tokens: int | None = None,
        rubrics: str | None = None,
        critic: Any | None = None,
    ) -> None:
        from firm.critic import Critic

        kwargs: dict[str, Any] = {"rubrics": rubrics}
        if device is not None:
            kwargs["device"] = device
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        self.critic = critic if critic is not None else Critic.from_pretrained(model, **kwargs)
        self.rubrics = self.critic.pack.ref
        self.readout: Readout = readout
        self.batch_size = batch_size
        self.name = str(model)

    def judge(self, items: Sequence[BenchItem], bench: Bench) -> list[Judgement]:
        from firm.critic import CriticRequest

        reqs = [
            CriticRequest(
                task=it.task, axis=it.axis, images=bench.open_images(it), sample_id=it.id, **_fields(it)
            )
            for it in items
        ]
        return list(self.critic.judge(reqs, readout=self.readout, batch_size=self.batch_size))

    def close(self) -> None:
        return None


# ----------------------------------------------------------------------------------------------- OpenAI-compatible
def openai_messages(item: BenchItem, bench: Bench, pack: Any = None) -> tuple[list[dict[str, Any]], str, int]:
    """The chat messages for one item (the pack's student rubric and layout, its image codec applied), the
    rubric's answer format and its answer budget."""
    from firm.critic.messages import build_messages, encode_images
    from firm.rubric_store import load_pack

    rubric = load_pack(pack).get(item.task, item.axis, "student")
    msgs = build_messages(rubric, encode_images(rubric, bench.open_images(item)), **_fields(item))
    return to_wire(msgs), rubric.answer_format, rubric.generation.max_new_tokens


class OpenAICompatibleBackend:
    """A critic behind an OpenAI-compatible chat-completions endpoint (HTTP through `firm.llm.OpenAIChatClient`)."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 120.0,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        rubrics: str | None = None,
    ) -> None:
        """`max_tokens`: answer budget for every item (None: the rubric pack's per (task, axis))."""
        from firm.rubric_store import load_pack

        self.client = OpenAIChatClient(
            base_url, model, api_key=api_key, concurrency=concurrency, max_retries=max_retries,
            backoff_s=backoff_s, timeout_s=timeout_s, temperature=temperature, label="critic",
        )  # fmt: skip
        self.base_url, self.model = self.client.base_url, self.client.model
        self.max_tokens = max_tokens
        self.name = f"{self.model} @ {self.base_url}"
        self.pack = load_pack(rubrics)
        self.rubrics = self.pack.ref

    @property
    def requests_sent(self) -> int:
        """Requests sent, including retries (for tests and monitoring)."""
        return self.client.requests_sent

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleBackend(base_url={self.base_url!r}, model={self.model!r})"

    async def ajudge(self, items: Sequence[BenchItem], bench: Bench) -> list[Judgement]:
        from firm.rewards.parsing import parse_answer

        prepared = [openai_messages(it, bench, self.pack) for it in items]
        jobs = [(m, self.max_tokens or budget) for m, _, budget in prepared]
        answers = await self.client.amap(jobs)
        out = []
        for it, (_, fmt, _), ans in zip(items, prepared, answers, strict=True):
            assert isinstance(ans, ChatResult)  # amap raises failures (return_errors=False)
            res = parse_answer(fmt, ans.text)
            status = "truncated" if ans.truncated and not res.ok else res.status
            out.append(
                Judgement(
                    task=it.task,
                    axis=it.axis,
                    status=status,
                    score=res.score if res.ok else None,
                    reasoning=res.reasoning,
                    raw_text=ans.text,
                    parsed_from=res.parsed_from,
                    sample_id=it.id,
                )
            )
        return out

    def judge(self, items: Sequence[BenchItem], bench: Bench) -> list[Judgement]:
        return asyncio.run(self.ajudge(items, bench))

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------------ triton
def _axis_status(status: str, axis: str) -> str:
    for part in status.split(","):
        name, _, ax = part.partition(":")
        if ax == axis and name in ANSWER_STATUSES:
            return name
    return "unparseable"


class TritonBackend:
    """Items judged by the FIRM reward service (Triton) through `firm.serving.RewardClient`."""

    def __init__(
        self, endpoints: str | Sequence[str], *, client: Any | None = None, **client_kwargs: Any
    ) -> None:
        if client is None:
            from firm.serving.client import RewardClient

            client = RewardClient(endpoints, **client_kwargs)
        self.client = client
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.name = "triton://" + ",".join(eps)
        self.rubrics = _served_pack(client)
        self.samples_scored = 0  # distinct samples sent (an edit serves both of its axes)

    def judge(self, items: Sequence[BenchItem], bench: Bench) -> list[Judgement]:
        groups: dict[tuple[str, tuple[str, ...], str], list[int]] = {}
        for i, it in enumerate(items):
            text = (it.instruction if it.task == "edit" else it.prompt) or ""
            groups.setdefault((it.task, tuple(it.images), text), []).append(i)
        keys = list(groups)
        edit_keys = [k for k in keys if k[0] == "edit"]
        gen_keys = [k for k in keys if k[0] == "gen"]
        first = {k: items[groups[k][0]] for k in keys}
        edit_in = [(*bench.open_images(first[k]), k[2]) for k in edit_keys]
        gen_in = [(bench.open_images(first[k])[0], k[2]) for k in gen_keys]
        breakdowns = dict(zip(edit_keys, self.client.score_edit(edit_in) if edit_in else [], strict=True))
        breakdowns.update(zip(gen_keys, self.client.score_gen(gen_in) if gen_in else [], strict=True))
        self.samples_scored += len(keys)
        out: list[Judgement | None] = [None] * len(items)
        for k, idxs in groups.items():
            b = breakdowns[k]
            for i in idxs:
                it = items[i]
                raw = b.raw_scores.get(it.axis)
                if isinstance(raw, int | float) and not isinstance(raw, bool):
                    score, expected = round(raw), (None if float(raw).is_integer() else float(raw))
                    status = "ok" if 1 <= score <= 5 else "out_of_range"
                else:
                    score, expected, status = None, None, _axis_status(b.status, it.axis)
                out[i] = Judgement(
                    task=it.task,
                    axis=it.axis,
                    status=status,
                    score=score if status == "ok" else None,  # type: ignore[arg-type]
                    expected_score=expected,
                    reasoning=b.reasoning.get(it.axis, ""),
                    raw_text=b.model_dump_json(),
                    parsed_from="reward-service",
                    sample_id=it.id,
                )
        return [j for j in out if j is not None]

    def close(self) -> None:
        self.client.close()


def _served_pack(client: Any) -> str:
    """The rubric pack (name@sha256[:12]) the reward service was exported with, "" when it does not say."""
    served = getattr(client, "served_rubrics", None)
    try:
        return served() if callable(served) else ""
    except FirmError:
        return ""


# ---------------------------------------------------------------------------------------------------- --critic
def make_backend(
    spec: str,
    *,
    model: str | None = None,
    readout: Readout = "text",
    batch_size: int = 8,
    concurrency: int = 8,
    device: str | None = None,
    max_new_tokens: int | None = None,
    rubrics: str | None = None,
) -> CriticBackend:
    """Build a backend from `firmctl bench run --critic SPEC`:

    - `random://SEED` (or `random://`) — the random baseline;
    - `http://host:port[/v1]`, `https://...` — an OpenAI-compatible endpoint; `openai://host:port[/path]` is the same
      over plain HTTP (`openai+https://...` for TLS); the model comes from `--model` or `FIRM_OPENAI_MODEL`,
      the key from `FIRM_OPENAI_API_KEY`;
    - `triton://host:port[,host:port...]` — the FIRM reward service (gRPC endpoints of Triton);
    - anything else — a critic checkpoint: HF id, local path, or `file://`/`s3://` URI (`LocalCriticBackend`).

    `rubrics` (a pack name, path or URI) applies to the local critic and to endpoints; a reward service asks with
    the pack it was exported with, so passing one there is an error.
    """
    s = spec.strip()
    if not s:
        raise InputError("--critic must not be empty")
    if s.startswith("random://"):
        rest = s[len("random://") :]
        try:
            return RandomBackend(int(rest) if rest else 0)
        except ValueError:
            raise InputError(f"--critic {spec}: random://SEED needs an integer seed") from None
    if s.startswith(("openai://", "openai+https://", "http://", "https://")):
        if s.startswith("openai+https://"):
            base = "https://" + s[len("openai+https://") :]
        elif s.startswith("openai://"):
            base = "http://" + s[len("openai://") :]
        else:
            base = s
        return OpenAICompatibleBackend(
            base, model, concurrency=concurrency, max_tokens=max_new_tokens, rubrics=rubrics
        )
    if s.startswith("triton://"):
        eps = [e.strip() for e in s[len("triton://") :].split(",") if e.strip()]
        if not eps:
            raise InputError(f"--critic {spec}: triton:// needs host:port (comma-separated for several)")
        if rubrics is not None:
            raise InputError(
                "--rubrics cannot be used with a triton:// critic: the reward service asks with the rubric pack "
                "it was exported with (firmctl serve export --rubrics)"
            )
        return TritonBackend(eps)
    from firm.storage.model_ref import check_model_ref

    check_model_ref(s, "--critic")  # a mistyped local path fails here, not after hub retries
    return LocalCriticBackend(
        s,
        readout=readout,
        batch_size=batch_size,
        device=device,
        max_new_tokens=max_new_tokens,
        rubrics=rubrics,
    )
