"""The house's shape (docs/architecture.md), read from the source with `ast` — nothing is imported, so this is fast.

Every `import` / `from ... import` in `firm/` and `pipelines/` counts, at module level, inside functions and under
`if TYPE_CHECKING:` alike. A failure names the file, the line and the rule broken:

- allowed imports: a unit (a package, a top-level module, or one of the few low modules named inside a higher
  package) imports only the units `ALLOWED` lists for it — never upwards; every module belongs to a unit;
- no import cycles between modules (`KNOWN_CYCLES` would list one allowed while it is being fixed; it is empty);
- the specific rules (`RULES`): `firm.rewards` never reads the object store, `firm/images.py` and the client-side
  `firm/serving/encoding.py` stay light and never import the critic, only `firm/launch` and `pipelines` know
  Kubernetes / Kubeflow / KFP;
- docs/architecture.md states the same table as `ALLOWED`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

# Which unit may import which. A module belongs to the longest unit that prefixes its dotted name (`firm` itself is
# only `firm/__init__.py`); imports inside one unit are not checked here (the cycle check covers them). Bottom up:
# the foundation, then the stages, then what drives them. docs/architecture.md shows this same table.
ALLOWED: dict[str, frozenset[str]] = {
    k: frozenset(v)
    for k, v in {
        # foundation: no firm imports, or only each other
        "firm": [],
        "firm.errors": [],
        "firm.schemas": [],
        "firm.logs": [],
        "firm.progress": [],
        "firm.processes": [],
        "firm.jsonhttp": [],
        "firm.reports": [],
        "firm.launch.cluster": [],  # settings data (pydantic only), part of FirmSettings
        "firm.models.processors": [],  # image-only Qwen-VL processors (transformers only)
        "firm.config": ["firm.errors", "firm.launch.cluster"],
        "firm.overrides": ["firm.errors"],
        "firm.llm": ["firm.errors"],
        "firm.storage": ["firm", "firm.config", "firm.errors", "firm.schemas"],
        "firm.rewards": ["firm.config", "firm.errors", "firm.schemas"],
        "firm.images": ["firm.errors", "firm.storage"],
        "firm.recipes": ["firm.config", "firm.errors", "firm.storage"],
        "firm.rubric_store": ["firm.errors", "firm.rewards", "firm.storage"],
        "firm.curation.dataset": [
            "firm.errors",
            "firm.rewards",
            "firm.schemas",
            "firm.storage",
        ],  # the SFT format
        # stages
        "firm.critic": [
            "firm.config",
            "firm.curation.dataset",
            "firm.errors",
            "firm.images",
            "firm.logs",
            "firm.models.processors",
            "firm.overrides",
            "firm.processes",
            "firm.progress",
            "firm.recipes",
            "firm.rewards",
            "firm.rubric_store",
            "firm.schemas",
            "firm.storage",
        ],
        "firm.curation": [
            "firm.config",
            "firm.critic",
            "firm.curation.dataset",
            "firm.errors",
            "firm.images",
            "firm.llm",
            "firm.progress",
            "firm.rewards",
            "firm.rubric_store",
            "firm.storage",
        ],
        "firm.models": ["firm.critic", "firm.errors", "firm.models.processors", "firm.rewards"],
        "firm.serving": [
            "firm.config",
            "firm.critic",
            "firm.errors",
            "firm.images",
            "firm.processes",
            "firm.rewards",
            "firm.rubric_store",
            "firm.schemas",
            "firm.storage",
        ],
        "firm.bench": [
            "firm.config",
            "firm.critic",
            "firm.curation",
            "firm.errors",
            "firm.images",
            "firm.llm",
            "firm.progress",
            "firm.rewards",
            "firm.rubric_store",
            "firm.schemas",
            "firm.serving",
            "firm.storage",
        ],
        "firm.rl": [
            "firm.config",
            "firm.critic",
            "firm.curation",
            "firm.errors",
            "firm.images",
            "firm.logs",
            "firm.models",
            "firm.models.processors",
            "firm.overrides",
            "firm.processes",
            "firm.progress",
            "firm.recipes",
            "firm.reports",
            "firm.schemas",
            "firm.serving",
            "firm.storage",
        ],
        # what drives the stages
        "firm.launch": [
            "firm.bench",  # the safe critic rollout benches a candidate through the live endpoint
            "firm.config",
            "firm.critic",
            "firm.errors",
            "firm.launch.cluster",
            "firm.overrides",
            "firm.processes",
            "firm.recipes",
            "firm.rl",
            "firm.serving",
            "firm.storage",
        ],
        "pipelines": [
            "firm.bench",
            "firm.config",
            "firm.curation",
            "firm.errors",
            "firm.launch",
            "firm.logs",
            "firm.progress",
            "firm.recipes",
            "firm.rl",
            "firm.rubric_store",
            "firm.serving",
            "firm.storage",
        ],
        "firm.quickstart": [
            "firm.bench",
            "firm.config",
            "firm.curation",
            "firm.errors",
            "firm.jsonhttp",
            "firm.models",
            "firm.progress",
            "firm.reports",
            "firm.rl",
            "firm.storage",
            "pipelines",
        ],
        "firm.cli": [
            "firm",
            "firm.bench",
            "firm.config",
            "firm.critic",
            "firm.curation",
            "firm.errors",
            "firm.launch",
            "firm.logs",
            "firm.models",
            "firm.progress",
            "firm.quickstart",
            "firm.recipes",
            "firm.rewards",
            "firm.rl",
            "firm.rubric_store",
            "firm.serving",
            "firm.storage",
            "pipelines",
        ],
    }.items()
}

# Import cycles that exist and are being fixed; each entry is the exact set of modules of one cycle. Delete an entry
# when its cycle is gone (test_known_cycles_still_exist says so).
KNOWN_CYCLES: list[frozenset[str]] = []

KUBERNETES = ("kfp", "kubernetes", "kubeflow")
HEAVY = ("torch", "transformers", "diffusers", "accelerate", "deepspeed", "peft")


@dataclass(frozen=True)
class Rule:
    """Modules under any of `where` (path prefixes; `except_` excluded) must not import anything under `forbidden`
    (dotted prefixes)."""

    name: str
    where: tuple[str, ...]
    forbidden: tuple[str, ...]
    except_: tuple[str, ...] = ()

    def applies(self, path: str) -> bool:
        return path.startswith(self.where) and not path.startswith(self.except_)


RULES: list[Rule] = [
    Rule(
        "firm.rewards is pure: packs are read from the object store or the network by callers",
        ("firm/rewards/",),
        ("firm.storage", "httpx", "requests", "urllib.request"),
    ),
    Rule("the image helpers stay light", ("firm/images.py",), ("firm.critic", *HEAVY)),
    Rule("client-side encoding stays light", ("firm/serving/encoding.py",), ("firm.critic", *HEAVY)),
    Rule(
        "only firm/launch and pipelines know Kubernetes / Kubeflow / KFP",
        ("firm/", "pipelines/"),
        KUBERNETES,
        except_=("firm/launch/", "pipelines/"),
    ),
]


@dataclass(frozen=True)
class Import:
    path: str  # the importing file, relative to the repository root
    line: int
    target: str  # the dotted name imported (module, or module.attribute)


def module_name(path: str) -> str:
    parts = list(Path(path).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _statements(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones too (functions, classes, if/try/with/for/match bodies): imports are statements,
    so expressions need no visit (several times faster than `ast.walk`)."""
    for node in nodes:
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from _statements(getattr(node, field, None) or [])
        for handler in getattr(node, "handlers", None) or []:
            yield from _statements(handler.body)
        for case in getattr(node, "cases", None) or []:
            yield from _statements(case.body)


@cache
def imports_of(path: str, source: str) -> tuple[Import, ...]:
    """Every import statement of a module, wherever it is (module level, functions, TYPE_CHECKING blocks)."""
    is_pkg = Path(path).name == "__init__.py"
    package = module_name(path) if is_pkg else module_name(path).rpartition(".")[0]
    found: list[Import] = []
    for node in _statements(ast.parse(source, filename=path).body):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{parent}.{base}" if base else parent
            found += [Import(path, node.lineno, f"{base}.{a.name}") for a in node.names]
    return tuple(found)


def unit_of(name: str) -> str | None:
    """The `ALLOWED` unit a dotted module name belongs to (the longest prefix), None when it belongs to none."""
    best = None
    for unit in ALLOWED:
        if (name == unit or (unit != "firm" and name.startswith(unit + "."))) and len(unit) > len(best or ""):
            best = unit
    return best


def _own(name: str, modules: dict[str, str]) -> str | None:
    """The most specific module of ours that `name` names (`firm.x.y.attr` → `firm.x.y`), else None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _find_cycle(scc: set[str], edges: dict[str, dict[str, Import]]) -> list[Import]:
    """One cycle through the strongly connected component `scc`, as the imports that form it."""
    start = min(scc)
    prev: dict[str, tuple[str, Import]] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt, imp in sorted(edges[node].items()):
            if nxt not in scc:
                continue
            if nxt == start:
                chain = [imp]
                while node != start:
                    node, step = prev[node]
                    chain.append(step)
                return chain[::-1]
            if nxt not in prev:
                prev[nxt] = (node, imp)
                queue.append(nxt)
    return []


def _sccs(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def check(sources: dict[str, str], known_cycles: list[frozenset[str]] = KNOWN_CYCLES) -> list[str]:
    """Every violation in `sources` (repository-relative path → Python source), one line each:
    `path:line: what (rule)`."""
    modules = {module_name(p): p for p in sources}
    problems: list[str] = []
    edges: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for path, source in sorted(sources.items()):
        mod = module_name(path)
        unit = unit_of(mod)
        if unit is None:
            problems.append(f"{path}:1: module {mod} belongs to no unit of the table (rule: allowed imports)")
        for imp in imports_of(path, source):
            for rule in RULES:
                if rule.applies(path) and _is_under(imp.target, rule.forbidden):
                    problems.append(f"{path}:{imp.line}: imports {imp.target} (rule: {rule.name})")
            target = _own(imp.target, modules)
            if target is None or target == mod:
                continue
            edges[mod].setdefault(target, imp)
            target_unit = unit_of(target)
            if unit is None or target_unit is None or target_unit == unit:
                continue
            if target_unit.startswith(unit + ".") or target_unit in ALLOWED[unit]:
                continue  # a low module inside one's own package, or an allowed import
            problems.append(
                f"{path}:{imp.line}: {unit} imports {target} ({target_unit}), which the table does not allow "
                f"(rule: allowed imports, docs/architecture.md)"
            )
    for scc in _sccs(edges):
        files = frozenset(modules[m] for m in scc)
        if files in known_cycles:
            continue
        chain = " → ".join(f"{i.path}:{i.line} imports {i.target}" for i in _find_cycle(scc, edges))
        problems.append(f"{chain} (rule: no import cycles between modules)")
    return problems


@cache
def repository_sources() -> dict[str, str]:
    files = sorted([*(ROOT / "firm").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")])
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in files}


def doc_table() -> dict[str, frozenset[str]]:
    """The allowed-imports table as docs/architecture.md states it (rows `| `unit` | what | `a`, `b` |`)."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split("<!-- allowed-imports:start -->", 1)[1].split("<!-- allowed-imports:end -->", 1)[0]
    table: dict[str, frozenset[str]] = {}
    for row in body.splitlines():
        m = re.fullmatch(r"\| `([\w.]+)` \| [^|]* \| (.*) \|", row.strip())
        if m:
            table[m.group(1)] = frozenset(re.findall(r"`([\w.]+)`", m.group(2)))
    return table


# ------------------------------------------------------------------------------------------------------ the tests


def test_the_code_keeps_the_layering() -> None:
    problems = check(repository_sources())
    assert not problems, "\n" + "\n".join(problems)


def test_the_table_is_a_layering() -> None:
    """The table itself has no cycle (then every allowed import points down) and names only units it has."""
    unknown = {t for allowed in ALLOWED.values() for t in allowed} - set(ALLOWED)
    assert not unknown
    graph = {u: {t: Import("docs/architecture.md", 0, t) for t in allowed} for u, allowed in ALLOWED.items()}
    assert not _sccs(graph)


def test_the_doc_states_the_same_table() -> None:
    stated = doc_table()
    differ = {u for u in set(stated) | set(ALLOWED) if stated.get(u) != ALLOWED.get(u)}
    assert not differ, f"docs/architecture.md and ALLOWED differ for: {sorted(differ)}"


def test_known_cycles_still_exist() -> None:
    """An allowlisted cycle that is gone must leave the allowlist (so it cannot come back silently)."""
    cycles = [p for p in check(repository_sources(), known_cycles=[]) if "no import cycles" in p]
    for known in KNOWN_CYCLES:
        assert any(all(f in line for f in known) for line in cycles), f"{sorted(known)} is no longer a cycle"


def test_the_checker_catches_violations() -> None:
    """Synthetic modules: an upward import, a cycle through a function-level import, each rule."""
    sources = {
        "firm/__init__.py": "",
        "firm/errors.py": "from firm.cli.main import main\n",  # upward
        "firm/cli/__init__.py": "",
        "firm/cli/main.py": "def main() -> None: ...\n",
        "firm/rewards/__init__.py": "",
        "firm/rewards/a.py": "import json\nfrom firm.rewards.b import f\n",
        "firm/rewards/b.py": "def f() -> None:\n    from firm.rewards import a\n    from firm.storage import read_bytes\n",
        "firm/storage/__init__.py": "def read_bytes() -> None: ...\n",
        "firm/serving/__init__.py": "",
        "firm/serving/encoding.py": "def enc() -> None:\n    from firm.critic.images import load_image\n",
        "firm/critic/__init__.py": "",
        "firm/curation/teachers.py": "import kubernetes.client\n",
        "firm/newthing.py": "",
    }
    problems = check(sources, known_cycles=[])
    expected = [
        "firm/errors.py:1: firm.errors imports firm.cli.main (firm.cli), which the table does not allow",
        "firm/rewards/a.py:2 imports firm.rewards.b.f → firm/rewards/b.py:2 imports firm.rewards.a "
        "(rule: no import cycles between modules)",
        "firm/rewards/b.py:3: imports firm.storage.read_bytes (rule: firm.rewards is pure",
        "firm/rewards/b.py:3: firm.rewards imports firm.storage (firm.storage), which the table does not allow",
        "firm/serving/encoding.py:2: imports firm.critic.images.load_image (rule: client-side encoding stays light)",
        "firm/curation/teachers.py:1: imports kubernetes.client (rule: only firm/launch and pipelines know",
        "firm/newthing.py:1: module firm.newthing belongs to no unit of the table",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)
    assert len(problems) == len(expected), problems
    # the same cycle, allowlisted, is tolerated; a third module joining it is not
    assert not any(
        "cycles" in p for p in check(sources, [frozenset({"firm/rewards/a.py", "firm/rewards/b.py"})])
    )
    sources["firm/rewards/c.py"] = "from firm.rewards import a\n"
    sources["firm/rewards/b.py"] += "from firm.rewards import c\n"
    assert any("cycles" in p for p in check(sources, [frozenset({"firm/rewards/a.py", "firm/rewards/b.py"})]))


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("firm", "firm"),
        ("firm.critic.critic", "firm.critic"),
        ("firm.curation.dataset", "firm.curation.dataset"),
        ("firm.curation.edit", "firm.curation"),
        ("firm.models.tiny", "firm.models"),
        ("pipelines.components.serve", "pipelines"),
        ("firmware", None),
    ],
)
def test_units_are_the_longest_prefix(name: str, unit: str | None) -> None:
    assert unit_of(name) == unit
