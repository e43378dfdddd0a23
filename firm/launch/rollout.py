"""Safe critic rollout: serve the candidate beside the incumbent, bench both through the live endpoint, promote only
a critic that is not worse — and roll back to the previous version on request.

A rollout-capable server runs on a *live repository*: a writable copy of an exported repository that tritonserver
serves in model-control mode EXPLICIT (`firmctl serve start --live-dir`, what `firm.serving.service` starts).
Layout (python engine)::

    <live>/firm_engine/config.pbtxt            the served version's engine config: `version_policy` names it
    <live>/firm_engine/<N>/                    version N: model.py, critic/, rubrics.yaml, release/<model>.pbtxt
    <live>/firm_critic|firm_edit_reward|firm_gen_reward/   the public ensembles (over firm_engine, latest version)
    <live>/firm_live.json                      {"version": N, "previous": [..]}: the served version, what came before
    <live>/<model>_candidate/                  only while a candidate is benched: the candidate's own model set

Rollout (`rollout(service, candidate, audit)`): the candidate's models are written under `_candidate` names and
loaded beside the incumbent's (a second copy of the weights for the time of the audit); both are benched on the same
audit set (`firm.bench` items with human scores) through the same gRPC endpoint; the candidate is promoted only when
its MAE (over parsed answers) is not worse than the incumbent's by more than `margin` and its parse-failure rate is
not higher. Promotion moves the candidate's files into `firm_engine/<N+1>/`, writes that version's configs and
reloads the public models: Triton keeps serving the loaded model until the reload succeeds and then swaps it in
"without any loss of availability" (its model-management contract; `benchmarks/critic_rollout.py` measures the
client side). A refused candidate is unloaded and removed; the step fails with `RolloutRefused` (one line, both
scores). `rollback(service)` reactivates the version served before. Every decision is recorded in the object store
(`history_uri(service)`: one JSON per event and `current.json`, the pointer a cluster pod resolves at start).

On a cluster (`firm.launch.reward_service`, target kubernetes) the same layout is built by the chart's candidate pod
at start (`stage_rollout`: `firmctl serve stage-rollout`, incumbent + candidate in one repository, no model control),
benched there with `audit_scores` / `decide`, and a promotion rolls the reward Deployment to the candidate.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from firm.errors import FirmError, InputError
from firm.serving.spec import CRITIC_MODEL, EDIT_REWARD_MODEL, ENGINE_MODEL, GEN_REWARD_MODEL

SUFFIX = "_candidate"
PUBLIC = (ENGINE_MODEL, CRITIC_MODEL, EDIT_REWARD_MODEL, GEN_REWARD_MODEL)
STATE = "firm_live.json"
RELEASE = "release"  # inside firm_engine/<N>/: the configs of every public model as version N serves them
DEFAULT_MARGIN = 0.1


class RolloutError(FirmError):
    """A rollout or rollback could not be carried out (nothing changed on the server)."""


class RolloutRefused(RolloutError):
    """The candidate was benched and refused: the incumbent keeps serving."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


class AuditScores(BaseModel):
    n: int
    mae: float | None  # over the parsed answers; None when none parsed
    parse_failure_rate: float

    def line(self) -> str:
        mae = "n/a" if self.mae is None else f"{self.mae:.3f}"
        return f"MAE {mae}, parse failures {self.parse_failure_rate:.0%} (n={self.n})"


class Decision(BaseModel):
    promoted: bool
    reason: str
    candidate: AuditScores
    incumbent: AuditScores | None
    margin: float
    version: int  # the version serving after the decision
    previous: int | None


class HistoryEntry(BaseModel):
    action: Literal["initial", "promote", "refuse", "rollback"]
    service: str
    who: str
    when: str
    version: int  # the repository version serving after this event
    previous: int | None
    candidate: str | None = None
    candidate_scores: AuditScores | None = None
    incumbent_scores: AuditScores | None = None
    margin: float | None = None
    reason: str = ""
    incumbent: str | None = None  # cluster promote / refuse: the repository that served before (the bench's)


# -- the decision -------------------------------------------------------------------------------------------------


def decide(incumbent: AuditScores | None, candidate: AuditScores, margin: float) -> tuple[bool, str]:
    """Promote iff the candidate's MAE is not worse by more than `margin` and its parse-failure rate not higher."""
    both = f"candidate {candidate.line()}; incumbent {incumbent.line() if incumbent else 'none'}"
    if incumbent is None:
        return True, f"no incumbent: candidate served ({both})"
    if candidate.parse_failure_rate > incumbent.parse_failure_rate:
        return False, f"candidate refused: parse-failure rate is higher ({both})"
    if incumbent.mae is not None:
        if candidate.mae is None:
            return False, f"candidate refused: no answer parsed ({both})"
        if candidate.mae > incumbent.mae + margin:
            return False, f"candidate refused: MAE worse by more than the margin {margin:g} ({both})"
    return True, f"candidate promoted ({both})"


def audit_scores(grpc: str, bench: object, *, suffix: str = "", timeout: float = 120.0) -> AuditScores:
    """Bench the models `firm_edit_reward{suffix}` / `firm_gen_reward{suffix}` at `grpc` on a loaded bench."""
    from firm.bench.backends import TritonBackend

    items = bench.items  # type: ignore[attr-defined]
    backend = TritonBackend(
        grpc,
        edit_model=EDIT_REWARD_MODEL + suffix,
        gen_model=GEN_REWARD_MODEL + suffix,
        timeout=timeout,
    )
    try:
        judgements = backend.judge(items, bench)  # type: ignore[arg-type]
    finally:
        backend.close()
    errors = [
        abs(j.score - it.human_score) for j, it in zip(judgements, items, strict=True) if j.score is not None
    ]
    n = len(items)
    return AuditScores(
        n=n,
        mae=round(sum(errors) / len(errors), 4) if errors else None,
        parse_failure_rate=round((n - len(errors)) / n, 4) if n else 0.0,
    )


# -- the live repository -----------------------------------------------------------------------------------------


def _link_copy(src: Path, dst: Path) -> None:
    """Copy a tree, hard-linking files where the filesystem allows (weights are never modified in place)."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def _precompile(model_dir: Path) -> None:
    """Write the bytecode of a python model's `<version>/model.py` now. The Triton python stub's embedded interpreter
    ignores PYTHONDONTWRITEBYTECODE and writes `__pycache__` into the version directory on its first load; in
    model-control mode EXPLICIT the next load of a model over it (its ensembles) then finds the directory changed
    and loads the model a second time — twice the load time, and for a moment a second copy of its weights."""
    import py_compile

    for src in model_dir.glob("*/model.py"):
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(str(src), doraise=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _rename_model(text: str, old: str, new: str) -> str:
    text = re.sub(rf'^name: "{re.escape(old)}"$', f'name: "{new}"', text, flags=re.M)
    return re.sub(rf'model_name: "{re.escape(old)}"', f'model_name: "{new}"', text)


def _with_version(engine_cfg: str, holder: str, version: int) -> str:
    """The engine config pointed at `holder/<version>/` (weights, pack) and serving that version only."""
    text = re.sub(rf'"{re.escape(holder)}/\d+/', f'"{ENGINE_MODEL}/{version}/', engine_cfg)
    text = re.sub(r"^version_policy: .*\n", "", text, flags=re.M)
    return text + f"version_policy: {{ specific: {{ versions: [{version}] }} }}\n"


class LiveRepository:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def prepare(cls, repository: str | Path, live_dir: str | Path) -> LiveRepository:
        """`live_dir` as it is when it already holds a live repository started from `repository` (promotions
        survive a restart), else a fresh copy of `repository` (local dir or file:// / s3:// URI) as version 1."""
        live = cls(live_dir)
        if (live.path / STATE).is_file() and live.state().get("repository") == str(repository):
            return live  # a restart on the same repository serves what was promoted last
        from firm.serving.server import resolve_repository

        src = resolve_repository(repository)
        if (src / ENGINE_MODEL / "1" / "model.json").exists() or not (src / ENGINE_MODEL).is_dir():
            raise InputError("--live-dir: rollouts need a python-engine repository (firm_engine)")
        tmp = live.path.with_name(f".{live.path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _link_copy(src, tmp)
        for d in tmp.iterdir():  # a leftover MANIFEST / candidate is not part of a live repository
            if d.name.endswith(SUFFIX):
                shutil.rmtree(d)
        staged = cls(tmp)
        _precompile(tmp / ENGINE_MODEL)
        staged._write_release(
            1, {m: (tmp / m / "config.pbtxt").read_text() for m in staged.models()}, ENGINE_MODEL
        )
        staged._activate_files(1)
        staged._save_state(
            {
                "version": 1,
                "previous": [],
                "repository": str(repository),
                "repositories": {"1": str(repository)},
            }
        )
        if live.path.exists():
            shutil.rmtree(live.path)
        tmp.rename(live.path)
        return live

    def models(self) -> list[str]:
        return [m for m in PUBLIC if (self.path / m / "config.pbtxt").is_file()]

    def state(self) -> dict:
        return json.loads((self.path / STATE).read_text())

    def _save_state(self, state: dict) -> None:
        _write(self.path / STATE, json.dumps(state, indent=2) + "\n")

    @property
    def version(self) -> int:
        return int(self.state()["version"])

    def _write_release(self, version: int, configs: dict[str, str], holder: str) -> None:
        rel = self.path / ENGINE_MODEL / str(version) / RELEASE
        rel.mkdir(parents=True, exist_ok=True)
        for model, text in configs.items():
            if model == ENGINE_MODEL:
                text = _with_version(text, holder, version)
            (rel / f"{model}.pbtxt").write_text(text)

    def _activate_files(self, version: int) -> None:
        rel = self.path / ENGINE_MODEL / str(version) / RELEASE
        for f in sorted(rel.glob("*.pbtxt")):
            _write(self.path / f.stem / "config.pbtxt", f.read_text())

    # candidate
    def stage_candidate(self, candidate: str | Path) -> list[str]:
        """Write the candidate repository's models beside the incumbent's under `_candidate` names; returns them
        in load order (engine first)."""
        from firm.serving.server import resolve_repository

        src = resolve_repository(candidate)
        models = [m for m in PUBLIC if (src / m / "config.pbtxt").is_file()]
        if (src / CRITIC_MODEL / "1" / "model.json").exists() or ENGINE_MODEL not in models:
            raise InputError(f"candidate {candidate}: rollouts need a python-engine repository (firm_engine)")
        if models != self.models():
            raise InputError(
                f"candidate {candidate} serves {models}, the live repository {self.models()}: export it with "
                "the same --task"
            )
        self.remove_candidate()
        for m in models:
            dst = self.path / (m + SUFFIX)
            _link_copy(src / m, dst)
            text = (src / m / "config.pbtxt").read_text()
            for other in models:
                text = _rename_model(text, other, other + SUFFIX)
            text = text.replace(f'"{ENGINE_MODEL}/1/', f'"{ENGINE_MODEL}{SUFFIX}/1/')
            _write(dst / "config.pbtxt", text)
            _precompile(dst)
        return [m + SUFFIX for m in models]

    def remove_candidate(self) -> None:
        for m in PUBLIC:
            shutil.rmtree(self.path / (m + SUFFIX), ignore_errors=True)

    def promote_candidate(self) -> int:
        """Move the staged candidate into `firm_engine/<N+1>/` with its release configs; returns N+1 (not yet
        active: `activate`)."""
        versions = [int(d.name) for d in (self.path / ENGINE_MODEL).iterdir() if d.name.isdigit()]
        new = max(versions) + 1
        cand = self.path / (ENGINE_MODEL + SUFFIX)
        configs = {}
        for m in self.models():
            text = (self.path / (m + SUFFIX) / "config.pbtxt").read_text()
            for other in self.models():
                text = _rename_model(text, other + SUFFIX, other)
            configs[m] = text
        (cand / "1").rename(self.path / ENGINE_MODEL / str(new))
        self._write_release(new, configs, ENGINE_MODEL + SUFFIX)
        self.remove_candidate()
        return new

    def activate(self, version: int, *, previous: list[int]) -> None:
        if not (self.path / ENGINE_MODEL / str(version) / RELEASE).is_dir():
            raise RolloutError(f"version {version} is not in the live repository {self.path}")
        self._activate_files(version)
        state = self.state()
        self._save_state({**state, "version": version, "previous": previous})


# -- model control ------------------------------------------------------------------------------------------------


def _control(http: str, model: str, action: Literal["load", "unload"], timeout: float) -> None:
    url = f"{http.rstrip('/')}/v2/repository/models/{model}/{action}"
    if "://" not in url:
        url = "http://" + url
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read() or b"{}").get("error", "")
        except ValueError:
            msg = ""
        raise RolloutError(f"tritonserver could not {action} {model}: {msg or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RolloutError(f"tritonserver at {http} unreachable to {action} {model}: {exc}") from None


def _load_all(http: str, models: list[str], timeout: float) -> None:
    for m in models:  # the engine first: a reload keeps the loaded model serving until the new one is ready
        _control(http, m, "load", timeout)


def _unload_all(http: str, models: list[str], timeout: float) -> None:
    for m in reversed(models):
        with contextlib.suppress(RolloutError):  # removing what may not have loaded
            _control(http, m, "unload", timeout)


# -- history ------------------------------------------------------------------------------------------------------


def history_uri(service: str) -> str:
    from firm.config import get_settings

    return f"{get_settings().bucket_uris()['models']}/reward-service/{service}"


def _who(who: str | None) -> str:
    if who:
        return who
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record(entry: HistoryEntry, *, repository: str | None = None) -> str:
    """Write `entry` as `<history>/history/<when>-<action>.json` and update `<history>/current.json`."""
    from firm.storage import write_bytes

    root = history_uri(entry.service)
    stamp = entry.when.replace(":", "").replace("-", "").replace("+0000", "Z")
    uri = f"{root}/history/{stamp}-v{entry.version}-{entry.action}.json"
    write_bytes(uri, entry.model_dump_json(indent=2).encode())
    if entry.action != "refuse":
        current = {"version": entry.version, "previous": entry.previous, "when": entry.when, "who": entry.who}
        if repository:
            current["repository"] = repository
        write_bytes(f"{root}/current.json", json.dumps(current, indent=2).encode())
    return uri


def history(service: str) -> list[HistoryEntry]:
    """Every recorded event of `service`, oldest first."""
    from firm.storage import open_store

    store, key = open_store(f"{history_uri(service)}/history/")
    try:
        keys = sorted(o.key for o in store.list(key) if not o.is_dir and o.key.endswith(".json"))
    except FirmError:
        return []
    return [HistoryEntry.model_validate_json(store.get_bytes(k)) for k in keys]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _instant(text: str, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{what}: not an ISO 8601 time: {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def resolve_repository(service: str, default: str, *, deployed_at: str | None = None) -> str:
    """The repository a (cluster) pod of `service` serves: the promoted one `current.json` names, else `default`
    (the pod annotation / chart values). `deployed_at` (the annotation `firm.dev/deployed-at`: when `default` was
    rolled out explicitly — the deploy step, a `helm upgrade` naming a new repository) later than the pointer's
    `when` makes `default` win: the newest explicit decision is served, a restart or an upgrade changes nothing."""
    from firm.storage import open_store

    uri = f"{history_uri(service)}/current.json"
    store, key = open_store(uri)
    if not store.exists(key):
        return default
    try:
        current = json.loads(store.get_bytes(key))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{uri}: not valid JSON ({exc})") from None
    if not isinstance(current, dict):
        raise InputError(f"{uri}: expected a JSON object, got {type(current).__name__}")
    repository = current.get("repository")
    if repository is None:  # a pointer without a repository (a rollback of an older live repository)
        return default
    if not isinstance(repository, str) or not repository.strip():
        raise InputError(f"{uri}: repository must be a non-empty string, got {repository!r}")
    if deployed_at and deployed_at.strip() and default:
        when = current.get("when")
        if not isinstance(when, str):
            raise InputError(f"{uri}: when must be an ISO 8601 time, got {when!r}")
        if _instant(deployed_at.strip(), "deployed-at") > _instant(when, f"{uri}: when"):
            return default
    return repository


# -- rollout / rollback -------------------------------------------------------------------------------------------


def _service(service: str):  # -> ServiceRecord
    from firm.serving.service import get_service

    rec = get_service(service)
    if rec is None:
        raise RolloutError(f"no running reward service {service!r} (firmctl serve start / the deploy step)")
    if not rec.live:
        raise RolloutError(f"reward service {service!r} was not started on a live repository (--live-dir)")
    return rec


def rollout(
    service: str,
    candidate: str,
    audit: str,
    *,
    margin: float = DEFAULT_MARGIN,
    who: str | None = None,
    timeout: float = 600.0,
) -> Decision:
    """Bench `candidate` (an exported repository) beside the running `service`'s critic on the `audit` bench and
    promote it or refuse it (`RolloutRefused`, the incumbent untouched)."""
    from firm.bench.loaders import load_bench

    if margin < 0:
        raise InputError(f"margin must be ≥ 0, got {margin}")
    rec = _service(service)
    bench = load_bench(audit)
    live = LiveRepository(rec.live)  # type: ignore[arg-type]
    names = live.stage_candidate(candidate)
    try:
        _load_all(rec.http, names, timeout)
        incumbent = audit_scores(rec.grpc, bench)
        cand = audit_scores(rec.grpc, bench, suffix=SUFFIX)
    except BaseException:
        _unload_all(rec.http, names, timeout)
        live.remove_candidate()
        raise
    promote, reason = decide(incumbent, cand, margin)
    old = live.version
    previous = list(live.state().get("previous", []))
    _unload_all(rec.http, names, timeout)  # before the promoted copy loads: never three copies of the weights
    if not promote:
        live.remove_candidate()
        decision = Decision(
            promoted=False, reason=reason, candidate=cand, incumbent=incumbent, margin=margin, version=old,
            previous=previous[-1] if previous else None,
        )  # fmt: skip
        record(_entry("refuse", service, who, decision, candidate))
        raise RolloutRefused(decision)
    new = live.promote_candidate()
    live.activate(new, previous=[*previous, old])
    try:
        _load_all(rec.http, live.models(), timeout)
    except RolloutError:
        live.activate(old, previous=previous)  # the files back as the server still serves them
        raise
    state = live.state()  # which repository each version came from: a rollback's pointer names it
    live._save_state({**state, "repositories": {**state.get("repositories", {}), str(new): candidate}})
    decision = Decision(
        promoted=True,
        reason=reason,
        candidate=cand,
        incumbent=incumbent,
        margin=margin,
        version=new,
        previous=old,
    )
    record(_entry("promote", service, who, decision, candidate), repository=candidate)
    return decision


def rollback(service: str, *, who: str | None = None, timeout: float = 600.0) -> HistoryEntry:
    """Serve the version that served before the current one again."""
    rec = _service(service)
    live = LiveRepository(rec.live)  # type: ignore[arg-type]
    state = live.state()
    previous = list(state.get("previous", []))
    if not previous:
        raise RolloutError(
            f"reward service {service!r} serves version {state['version']}: nothing to roll back to"
        )
    current, target = int(state["version"]), previous.pop()
    live.activate(target, previous=previous)
    try:
        _load_all(rec.http, live.models(), timeout)
    except RolloutError:
        live.activate(current, previous=[*previous, target])
        raise
    entry = HistoryEntry(
        action="rollback", service=service, who=_who(who), when=_now(), version=target, previous=current,
        reason=f"rolled back from version {current} to {target}",
    )  # fmt: skip
    record(entry, repository=state.get("repositories", {}).get(str(target)))
    return entry


class Lineage(BaseModel):
    """What `service`'s recorded history says it serves (replayed, oldest first)."""

    version: int | None  # the version serving now (None: nothing recorded)
    previous: list[int]  # the versions served before it, the last one first to return to
    repositories: dict[int, str]  # each version's repository, where recorded


def lineage(service: str) -> Lineage:
    """Replay `service`'s history as a live repository's state does: a promotion (or an `initial` that replaced a
    served version) puts the version it replaced on the stack, a rollback takes its target off it, a refusal changes
    nothing. Repositories: an `initial` / `promote` entry's `candidate`, and the `incumbent` a cluster bench records
    (the critic served before any record, e.g. the chart values' repository)."""
    version: int | None = None
    previous: list[int] = []
    repos: dict[int, str] = {}
    for e in history(service):
        if e.action in ("initial", "promote"):
            if e.candidate:
                repos[e.version] = e.candidate
            if e.previous is not None:
                if e.incumbent:
                    repos.setdefault(e.previous, e.incumbent)
                if e.previous != e.version:
                    previous.append(e.previous)
            version = e.version
        elif e.action == "refuse":
            if e.incumbent:
                repos.setdefault(e.version, e.incumbent)
        else:  # rollback (a cluster one names the repository it returned to)
            if e.candidate:
                repos.setdefault(e.version, e.candidate)
            if e.version in previous:
                del previous[len(previous) - 1 - previous[::-1].index(e.version) :]
            version = e.version
    return Lineage(version=version, previous=previous, repositories=repos)


def _entry(
    action: str, service: str, who: str | None, d: Decision, candidate: str, incumbent: str | None = None
) -> HistoryEntry:
    return HistoryEntry(
        action=action,  # type: ignore[arg-type]
        service=service,
        who=_who(who),
        when=_now(),
        version=d.version,
        previous=d.previous,
        candidate=candidate,
        candidate_scores=d.candidate,
        incumbent_scores=d.incumbent,
        margin=d.margin,
        reason=d.reason,
        incumbent=incumbent,
    )


def stage_rollout(incumbent: str, candidate: str, directory: str | Path) -> list[str]:
    """One Triton repository in `directory` serving the incumbent's public models and the candidate's under the
    `_candidate` names (what the chart's candidate pod serves with --model-control-mode=none, so both are benched
    through one endpoint); returns every model it serves, the candidate's last."""
    live = LiveRepository.prepare(incumbent, directory)
    return [*live.models(), *live.stage_candidate(candidate)]


def current(service: str) -> dict | None:
    """`current.json` of `service` (the promoted version's pointer), or None when nothing was recorded."""
    from firm.storage import open_store

    store, key = open_store(f"{history_uri(service)}/current.json")
    if not store.exists(key):
        return None
    try:
        data = json.loads(store.get_bytes(key))
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def next_version(service: str) -> tuple[int | None, int]:
    """(the version `service` serves per its pointer — None when nothing was recorded —, the next free number)."""
    now = current(service)
    served = now.get("version") if now else None
    served = served if isinstance(served, int) else None
    numbers = [e.version for e in history(service)] + ([served] if served else [])
    return served, max(numbers, default=0) + 1


def load_args(models: list[str]) -> list[str]:
    """tritonserver arguments of a live repository: explicit model control, its public models loaded at start."""
    return ["--model-control-mode=explicit", *[f"--load-model={m}" for m in models]]
