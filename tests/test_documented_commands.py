"""Every command written in the README, in docs/*.md and in a recipe header: run as written when it can run offline,
checked as far as it can be without running it otherwise.

Where the commands come from
  * README.md and docs/*.md: every line of a ```bash / ```sh / ```shell code block (a trailing backslash continues
    the line; a `# comment` after a command is not part of it);
  * firm/recipes/<kind>/*.yaml: the header comment block (the lines before the first non-comment line): a line
    whose text after `#` and its indentation starts with firmctl, python, torchrun or make, or the text after a
    `: ` on a header line that starts with one of those words ("As a job (...): firmctl job submit ...").
  Both are found by glob when the tests are collected, so a new recipe or document is covered without editing this
  file. Each document runs in its own fresh workspace, in the order its commands are written: a recipe's commands
  only find what the recipe's own prepare commands made.

The rule: a command runs only when everything it needs exists on a CPU machine without a network. Every rule
below that matches is reported; the first one decides:

  setup        `source`, `pip`, `cd`, `export`: changes the environment the suite itself runs in.
  make         `make TARGET`: the target must exist in the Makefile (never run here: `make test` would recurse,
               `make install` / `make images` change the environment or need a container engine).
  cluster      helm, kubectl, docker, eval, jq; `firmctl job submit|status|logs|cancel|list` without
               `--backend local`; `firmctl pipeline submit|upload`; `torchrun` (the command a PyTorchJob pod
               runs): needs a Kubernetes cluster, a KFP host or a container engine.
  remote       git, curl, wget; an http(s) URL that is not 127.0.0.1 / localhost, an s3:// URI, a Hugging Face id
               (`Org/name`), a `~/` path: needs the network, an object-store endpoint or a model hub.
  gpu          `--device cuda`, `--gpus`, `device=cuda`, or a training recipe whose base model / policy is a Hub
               model (the paper-scale recipes): needs a GPU (and the Hub).
  placeholder  `<...>`, `...`: a value the reader fills in.
  user-data    a relative path outside `runs/` that is not in the checkout (the released FIRM data, your own
               images, your values file): the reader brings it.
  server       `firmctl serve start` (runs until stopped), and commands that talk to a service on 127.0.0.1
               (`--endpoint 127.0.0.1:...`, `triton://127.0.0.1...`, `reward.url=127.0.0.1:...`): needs that
               server running.
  depends      names a path that a command not run above would have written (its `--out` / `--workdir`, a
               training recipe's run directory): its input cannot exist.
  trains       critic SFT (`firmctl critic train`, `python -m firm.critic.sft`), RL (`firmctl rl train`,
               `python -m firm.rl.train`), `firmctl job submit --backend local`, `firmctl pipeline run --local`,
               `firmctl quickstart`: tens of seconds to minutes each on 2 cores, beyond this test's budget (the
               suite trains these recipes and pipelines in tests/sft, tests/rl, tests/launch, tests/pipelines,
               tests/test_quickstart.py). With DOCUMENTED_COMMANDS=all they run as written too.
  run          everything else: run as written, in a fresh copy of the repository (the git working tree without
               ignored files: no runs/, no .venv/) with its own empty FIRM_HOME, the virtual environment's bin/
               first on PATH and OMP_NUM_THREADS=1; it must exit 0. A command written twice in one document runs
               once; one that already ran in an earlier document and only wrote files under runs/ (the tiny-model
               builders several recipes share) is not run again: the files it wrote there are copied in.

What is checked for a command that is not run
  * `firmctl ...`: the subcommand exists and its arguments parse (placeholders replaced by a word);
  * `python -m MODULE`: the module exists;
  * training commands: the recipe loads with the command's overrides and the world size fits its batch; in the
    `trains` class also the preflight that `firmctl` runs before starting processes (inputs present — so the
    recipe's prepare commands must have made them —, rubric pack, no earlier run in the way);
  * `firmctl job submit`: the spec resolves with its overrides; `firmctl pipeline run|submit`: the parameters
    validate against the pipeline's signature;
  * `make`: the target exists; cluster tools: the repository paths they name exist.
A command fails the test when a training command's recipe does not load with its overrides or its world size
(class `broken`, decided before every other class), or when no rule knows its program (`unknown`: a new kind of
command needs a rule here first).

How commands run
  Commands with shell syntax (pipes, redirections, command substitution) run under /bin/sh. The others
  (firmctl, python -m, python -c; `$VAR` expanded as the shell would) run in a fork of a warm interpreter that has
  already imported torch, transformers, diffusers, kfp and the kubernetes client, and nothing of firm: argv,
  working directory, environment and file descriptors are the command's own, only the import time (2-6 s per
  command on 2 cores) is saved. DOCUMENTED_COMMANDS=all runs every command as a fresh process under /bin/sh,
  the `trains` class included, and then what reads their outputs too (many minutes).

Cost, measured on this tree (README, docs, 18 recipes): 36 s of CPU in all (29 s user, 7 s system, the commands
included), 82 s of wall time with the 2 cores under a load average of 7 from other work.

`python tests/test_documented_commands.py` prints every command with its class and reasons, running nothing.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RUN_ALL = os.environ.get("DOCUMENTED_COMMANDS", "") == "all"
TIMEOUT_S = 900 if RUN_ALL else 180

COMMAND_WORDS = ("firmctl", "python", "torchrun", "make")
SETUP = {"source", "pip", "pip3", "cd", "export"}
CLUSTER_TOOLS = {"helm", "kubectl", "docker", "eval", "jq"}
NETWORK_TOOLS = {"git", "curl", "wget"}
SHELL_HELPERS = {"echo", "cat", "printf"}
OUTPUT_OPTIONS = {"--out", "--workdir", "--png", "--log-file", "--pipeline-root"}
PATH_SUFFIXES = (".png", ".jpg", ".jpeg", ".jsonl", ".json", ".yaml", ".yml", ".parquet", ".txt", ".md")
HF_ID = re.compile(r"^[A-Z][A-Za-z0-9-]*/[A-Za-z0-9][\w.-]*$")
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")
LOCAL_HOST = re.compile(r"(127\.0\.0\.1|localhost)(:\d+)?")
PRIORITY = [
    "broken", "unknown", "setup", "make", "cluster", "remote", "gpu", "placeholder", "user-data", "server", "depends",
    "trains", "run",
]  # fmt: skip
TRAINING_MODULES = {"firm.critic.sft": "sft", "firm.rl.train": "rl"}


# ------------------------------------------------------------------------------------------------ extraction


@dataclass
class Command:
    doc: str
    line: int
    text: str


def _strip_comment(line: str) -> str:
    """`cmd args  # comment` → `cmd args` (a `#` outside quotes, at the start or after whitespace)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def markdown_commands(path: Path) -> list[Command]:
    out: list[Command] = []
    in_block = shell = False
    pending, start = "", 0
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block = not in_block
            shell = in_block and stripped[3:].strip().lower() in {"bash", "sh", "shell"}
            continue
        if not shell:
            continue
        line = _strip_comment(raw).strip()
        if not pending:
            start = no
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if text:
            out.append(Command(str(path.relative_to(REPO)), start, text))
    return out


def recipe_commands(path: Path) -> list[Command]:
    words = "|".join(COMMAND_WORDS)
    out: list[Command] = []
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.startswith("#"):
            if raw.strip():
                break
            continue
        body = raw[1:]
        text = body.strip()
        if re.match(rf"^\s{{2,}}({words})\s", body):
            out.append(Command(str(path.relative_to(REPO)), no, text))
        elif m := re.search(rf":\s+((?:{words})\s.*)$", text):
            out.append(Command(str(path.relative_to(REPO)), no, m.group(1).strip()))
    return out


def documents() -> list[Path]:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return [*docs, *sorted((REPO / "firm" / "recipes").glob("*/*.yaml"))]


def commands_of(doc: Path) -> list[Command]:
    return markdown_commands(doc) if doc.suffix == ".md" else recipe_commands(doc)


# ------------------------------------------------------------------------------------------------ analysis


def _tokens(text: str) -> list[str]:
    lex = shlex.shlex(PLACEHOLDER.sub("PLACEHOLDER", text), posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def segments(text: str) -> list[list[str]]:
    """The simple commands of a command line, without operators and redirections."""
    out: list[list[str]] = [[]]
    toks = _tokens(text)
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok in {"|", "||", "&&", ";", "&"}:
            out.append([])
        elif tok in {"<", ">", ">>"}:
            i += 1  # the redirection's file
        else:
            out[-1].append(tok)
        i += 1
    return [s for s in out if s]


SHELL_OPERATORS = {"|", "||", "&&", ";", "&", "<", ">", ">>"}


def needs_shell(text: str) -> bool:
    """Operators, redirections, command substitution, or `$VAR` next to single quotes (where the shell would not
    expand it): what only /bin/sh does right. Plain `$VAR` / `${VAR}` is expanded by `expand`."""
    if any(t in SHELL_OPERATORS for t in _tokens(text)) or "`" in text or "$(" in text:
        return True
    return "$" in text and "'" in text


def expand(tok: str, env: dict[str, str], cwd: Path) -> str:
    """`$VAR` and `${VAR}` as the shell expands them in an unquoted or double-quoted word."""
    values = {**env, "PWD": str(cwd)}
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: values.get(m.group(1) or m.group(2), ""), tok)


def _norm(tok: str) -> str:
    """A path-like token relative to the workspace: `file://$PWD/runs/x` → `runs/x`, `./a` → `a`."""
    tok = tok.removeprefix("file://").replace("$PWD/", "").replace("${PWD}/", "")
    return tok.removeprefix("./").rstrip("/")


def _values(seg: list[str]) -> list[str]:
    """Every value a segment carries: arguments, option values, the values of key=value and --opt=value."""
    out = []
    for tok in seg[1:]:
        if (tok.startswith("--") and "=" in tok) or (not tok.startswith("-") and re.match(r"^[\w.]+=", tok)):
            out.append(tok.split("=", 1)[1])
        else:
            out.append(tok)
    return out


def _option(seg: list[str], *names: str) -> str | None:
    for i, tok in enumerate(seg):
        for name in names:
            if tok == name and i + 1 < len(seg):
                return seg[i + 1]
            if tok.startswith(name + "="):
                return tok.split("=", 1)[1]
    return None


def _firmctl_path(seg: list[str]) -> list[str]:
    """`firmctl job submit --config x` → ["job", "submit"]."""
    out = []
    for tok in seg[1:3]:
        if tok.startswith("-"):
            break
        out.append(tok)
    return out


def _is_recipe(tok: str) -> bool:
    from firm.errors import ConfigError
    from firm.recipes import recipe_path

    if not re.match(r"^[a-z_]+/[\w.-]+$", tok):
        return False
    try:
        recipe_path(tok)
    except ConfigError:
        return False
    return True


def training_call(seg: list[str]) -> dict[str, Any] | None:
    """For a command that trains from a recipe: entrypoint (sft|rl), config, overrides, world size."""
    prog = seg[0]
    if prog == "firmctl" and _firmctl_path(seg) in (["critic", "train"], ["rl", "train"]):
        kind = "sft" if seg[1] == "critic" else "rl"
        ctx = parse_firmctl(seg)
        overrides = list(ctx.args)
        if ctx.params.get("resume"):
            overrides.append(("resume=" if kind == "sft" else "checkpoint.resume=") + ctx.params["resume"])
        return {
            "kind": kind,
            "config": ctx.params["config"],
            "overrides": overrides,
            "world": ctx.params["nproc"],
        }
    module, rest, world = None, [], 1
    if prog.startswith("python") and len(seg) > 2 and seg[1] == "-m":
        module, rest = seg[2], seg[3:]
    elif prog == "torchrun" and "-m" in seg:
        i = seg.index("-m")
        module, rest = seg[i + 1], seg[i + 2 :]
        nnodes = int(_option(seg[:i], "--nnodes") or 1)
        world = nnodes * int(_option(seg[:i], "--nproc_per_node", "--nproc-per-node") or 1)
    if module not in TRAINING_MODULES:
        return None
    kind = TRAINING_MODULES[module]
    if kind == "sft":
        from firm.critic.sft import parse_args

        config, overrides = parse_args(rest)
    else:
        config = _option(rest, "--config") or ""
        resume = _option(rest, "--resume")
        skip = {"--config", "--resume"}
        overrides, i = [], 0
        while i < len(rest):
            if rest[i] in skip:
                i += 2
                continue
            overrides.append(rest[i])
            i += 1
        overrides += [f"checkpoint.resume={resume}"] if resume else []
    return {"kind": kind, "config": config, "overrides": overrides, "world": world}


def load_training(call: dict[str, Any]) -> Any:
    if call["kind"] == "sft":
        from firm.critic.sft_config import load_sft_config

        cfg = load_sft_config(call["config"], call["overrides"])
        cfg.global_batch(call["world"])
        return cfg
    from firm.rl.config import check_world_size, load_config
    from firm.rl.train import config_path

    cfg = load_config(config_path(call["config"]), call["overrides"])
    check_world_size(cfg, call["world"])
    return cfg


def training_outputs(call: dict[str, Any], cfg: Any) -> list[str]:
    if call["kind"] == "sft":
        return [_norm(f"{cfg.output_dir}/{cfg.run_name}")]
    return [_norm(cfg.output_uri)]


def training_base(call: dict[str, Any], cfg: Any) -> str:
    return cfg.model.path if call["kind"] == "sft" else cfg.policy.uri


def is_hub_id(ref: str, workspace: Path) -> bool:
    """A recipe's base model / policy that is a Hugging Face id (`org/name`), not a directory of the run."""
    return (
        re.match(r"^[\w.-]+/[\w.-]+$", ref) is not None
        and not ref.startswith(("runs/", "./"))
        and not (workspace / ref).exists()
    )


def parse_firmctl(seg: list[str]) -> Any:
    """Parse `firmctl ...` with the real CLI (without running it); returns the click context."""
    import typer.main

    from firm.cli.main import app

    cmd: Any = typer.main.get_command(app)
    args, names = list(seg[1:]), ["firmctl"]
    while getattr(cmd, "commands", None) and args and not args[0].startswith("-"):
        if args[0] not in cmd.commands:
            raise ValueError(f"firmctl {' '.join([*names[1:], args[0]])}: no such command")
        names.append(args[0])
        cmd = cmd.commands[args.pop(0)]
    if getattr(cmd, "commands", None):
        raise ValueError(f"{' '.join(names)}: a command group, not a command")
    return cmd.make_context(" ".join(names), args)


@dataclass
class Analysis:
    command: Command
    cls: str
    reasons: list[str]
    segments: list[list[str]]
    training: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)


def analyse(c: Command, workspace: Path, unavailable: set[str]) -> Analysis:
    found: dict[str, str] = {}
    first = c.text.split()[0]
    if first in CLUSTER_TOOLS:  # their arguments may nest quotes inside $(...), which shlex cannot read
        why = f"`{first}` needs a cluster or a container engine"
        return Analysis(c, "cluster", [f"cluster: {why}"], [c.text.split()])
    segs = segments(c.text)

    def hit(cls: str, why: str) -> None:
        found.setdefault(cls, why)

    training = None
    outputs: list[str] = []
    if "..." in c.text or "…" in c.text:
        hit("placeholder", "`...`: a value the reader fills in")
    if m := PLACEHOLDER.search(c.text):
        hit("placeholder", f"{m.group(0)}: a value the reader fills in")
    for seg in segs:
        prog = seg[0]
        if prog in SETUP:
            hit("setup", f"`{prog}` changes the environment the suite runs in")
            continue
        if prog == "make":
            hit("make", "a make target (the suite does not run make)")
            continue
        if prog in CLUSTER_TOOLS:
            hit("cluster", f"`{prog}` needs a cluster or a container engine")
            continue
        if prog in NETWORK_TOOLS:
            hit("remote", f"`{prog}` needs the network")
            continue
        if prog == "torchrun":
            hit("cluster", "torchrun: the command a PyTorchJob pod runs")
        elif prog in SHELL_HELPERS:
            pass
        elif prog == "firmctl":
            path = _firmctl_path(seg)
            local = _option(seg, "--backend") == "local"
            if path[:1] == ["job"] and path[1:] in (["submit"], ["status"], ["logs"], ["cancel"], ["list"]):
                if not local:
                    hit("cluster", f"firmctl job {path[1]} without --backend local: a Kubernetes cluster")
                elif path[1:] == ["submit"]:
                    hit("trains", "a local training job")
            if path in (["pipeline", "submit"], ["pipeline", "upload"]):
                hit("cluster", f"firmctl pipeline {path[1]}: a KFP host")
            if path[:1] == ["cluster"]:
                hit("cluster", f"firmctl {' '.join(path)}: a Kubernetes cluster")
            if path == ["pipeline", "run"]:
                hit("trains", "a local pipeline run (trains a critic)")
            if path == ["serve", "start"]:
                hit("server", "serve start runs a server until stopped")
            if path == ["quickstart"]:
                hit("trains", "the quickstart (trains a critic and a policy)")
                outputs.append(_norm(_option(seg, "--workdir") or "runs/quickstart"))
            if path in (["critic", "train"], ["rl", "train"]):
                hit("trains", f"firmctl {' '.join(path)}")
        elif prog.startswith("python"):
            if len(seg) > 2 and seg[1] == "-m" and seg[2] in TRAINING_MODULES:
                hit("trains", f"python -m {seg[2]}")
            elif not (len(seg) > 2 and seg[1] in ("-m", "-c")):
                hit("unknown", f"no rule for `{' '.join(seg[:2])}`")
        else:
            hit("unknown", f"no rule for the program `{prog}`")
            continue
        if prog in ("firmctl", "torchrun") or prog.startswith("python"):
            try:
                training = training_call(seg) or training
            except Exception as exc:  # reported by the checks
                hit("broken", f"cannot read the training command: {exc}")
        values = _values(seg)
        for v in values:
            if re.match(r"^https?://", v) and not LOCAL_HOST.search(v):
                hit("remote", f"{v}: the network")
            elif v.startswith("s3://"):
                hit("remote", f"{v}: an S3 endpoint")
            elif HF_ID.match(v) and not _is_recipe(v):
                hit("remote", f"{v}: a Hugging Face model or dataset")
            elif v.startswith("~"):
                hit("remote", f"{v}: a checkout of another repository")
            elif LOCAL_HOST.search(v) and not v.startswith("file:"):
                hit("server", f"{v}: a service running on this machine")
        if "--gpus" in seg or any(t.startswith("device=cuda") for t in seg):
            hit("gpu", "a GPU device")
        if _option(seg, "--device") and str(_option(seg, "--device")).startswith("cuda"):
            hit("gpu", f"--device {_option(seg, '--device')}")
        # paths: user data (not in the checkout, not under runs/) and outputs of commands not run
        skip_next = False
        for i, tok in enumerate(seg[1:], 1):
            if skip_next:
                skip_next = False
                continue
            if tok in OUTPUT_OPTIONS:
                skip_next = True
                continue
            if tok.startswith("-") or (re.match(r"^[\w.]+=", tok) and not tok.startswith("file:")):
                continue
            if seg[i - 1] in ("-m", "-c"):
                continue
            value = _norm(tok)
            if any(value == p or value.startswith(p + "/") for p in unavailable):
                hit("depends", f"{tok}: written by a command above that is not run")
            is_path = ("/" in tok or tok.endswith(PATH_SUFFIXES)) and "://" not in tok.replace("file://", "")
            if (
                is_path
                and not value.startswith("runs/")
                and value != "runs"
                and not (workspace / value).exists()
                and not _is_recipe(tok)
                and not HF_ID.match(tok)
                and not tok.startswith(("~", "/", "$"))
            ):
                hit("user-data", f"{tok}: not in the checkout (the reader brings it)")
        for p in unavailable:  # key=value arguments naming such an output (data.dataset=runs/x/...)
            for tok in seg:
                if re.match(r"^[\w.]+=", tok) and _norm(tok.split("=", 1)[1]).startswith(p + "/"):
                    hit("depends", f"{tok}: written by a command above that is not run")
        out = _option(seg, "--out")
        if out:
            outputs.append(_norm(out))
    if training is not None:
        try:
            cfg = load_training(training)
        except Exception as exc:
            hit("broken", f"recipe {training['config']} with {training['overrides']}: {exc}")
        else:
            base = training_base(training, cfg)
            if is_hub_id(base, workspace):
                hit("gpu", f"trains {base} (a Hub model at paper scale: a GPU)")
            outputs += training_outputs(training, cfg)
    cls = next(k for k in PRIORITY if k in found) if found else "run"
    reasons = [f"{k}: {found[k]}" for k in PRIORITY if k in found]
    return Analysis(c, cls, reasons, segs, training, outputs)


# ------------------------------------------------------------------------------------------------ checks


def check_without_running(a: Analysis, workspace: Path) -> None:
    """What can be checked of a command that is not run (raises on a problem)."""
    for seg in a.segments:
        prog = seg[0]
        if prog == "make":
            makefile = (workspace / "Makefile").read_text()
            for target in [t for t in seg[1:] if not t.startswith("-") and "=" not in t]:
                if not re.search(rf"^{re.escape(target)}:", makefile, re.M):
                    raise AssertionError(f"make {target}: no such target in the Makefile")
        elif prog in CLUSTER_TOOLS:
            for tok in seg[1:]:
                if (
                    re.match(r"^(charts|k8s|images|pipelines)/", tok)
                    and not (workspace / _norm(tok)).exists()
                ):
                    raise AssertionError(f"{tok}: no such path in the repository")
        elif prog == "firmctl":
            ctx = parse_firmctl(seg)
            path = _firmctl_path(seg)
            if path == ["job", "submit"] or path == ["job", "render"]:
                from firm.launch.spec import load_job_spec, resolve_job

                backend = "local" if ctx.params.get("backend") == "local" else "pytorchjob"
                resolve_job(load_job_spec(str(workspace / ctx.params["config"]), list(ctx.args)), backend)
            if path in (["pipeline", "run"], ["pipeline", "submit"]):
                from pipelines.api import validate_params

                validate_params(ctx.params["name"], list(ctx.params.get("params") or []))
        elif prog.startswith("python") and len(seg) > 2 and seg[1] == "-m":
            import importlib.util

            if importlib.util.find_spec(seg[2]) is None:
                raise AssertionError(f"python -m {seg[2]}: no such module")
        elif prog == "torchrun":
            import importlib.util

            module = seg[seg.index("-m") + 1]
            if importlib.util.find_spec(module) is None:
                raise AssertionError(f"torchrun -m {module}: no such module")
    if a.training is not None:
        cfg = load_training(a.training)
        if a.cls == "trains":
            if a.training["kind"] == "sft":
                from firm.critic.sft_config import preflight
            else:
                from firm.rl.train import preflight  # type: ignore[assignment]
            preflight(cfg, a.training["world"])


# ------------------------------------------------------------------------------------------------ running


WARM_SERVER = r"""
import atexit, json, os, runpy, sys, traceback
import torch, transformers, diffusers  # what every model command pays for at start
import transformers.models.qwen3_vl.modeling_qwen3_vl
import kfp, kfp.dsl, kfp.kubernetes, kubernetes.client, minio, httpx, typer, rich, pydantic_settings, yaml
BASE_PATH = list(sys.path[1:])
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd, name, flags in ((0, req["stdin"], os.O_RDONLY),
                                    (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                os.dup2(os.open(name, flags, 0o644), fd)
            os.setpgid(0, 0)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            kind, argv = req["kind"], req["argv"]
            if kind == "script":  # a console script, e.g. .venv/bin/firmctl
                sys.argv = list(argv)
                sys.path[:] = [os.path.dirname(argv[0]), *BASE_PATH]
                runpy.run_path(argv[0], run_name="__main__")
            elif kind == "module":  # python -m MODULE ARGS
                sys.argv = ["-m", *argv[1:]]
                sys.path[:] = [os.getcwd(), *BASE_PATH]
                runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
            else:  # python -c CODE ARGS
                sys.argv = ["-c", *argv[1:]]
                sys.path[:] = ["", *BASE_PATH]
                exec(compile(argv[0], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class WarmInterpreter:
    """A python process that has imported the heavy libraries once and forks one child per command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WARM_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            cwd=REPO,
        )
        self._read(300)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the warm interpreter exited")
        return json.loads(line)

    def run(self, kind: str, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
        assert self.proc.stdin is not None
        req = {
            "kind": kind,
            "argv": argv,
            "cwd": str(cwd),
            "env": env,
            "stdin": os.devnull,
            "stdout": str(log.with_suffix(".out")),
            "stderr": str(log.with_suffix(".err")),
        }
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = self._read(60)["pid"]
        try:
            return int(self._read(TIMEOUT_S)["rc"])
        except TimeoutError:
            os.killpg(pid, signal.SIGKILL)
            self._read(60)
            return -9

    def close(self) -> None:
        self.proc.kill()  # idle between commands: nothing to finish
        self.proc.wait()


def command_env(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRM_")}
    env.update(
        FIRM_HOME=str(workspace / ".firm-home"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(VENV_BIN.parent),
        FIRM_PROGRESS_INTERVAL="0",
    )
    env.pop("PYTHONPATH", None)
    return env


def make_workspace(dest: Path) -> Path:
    """A fresh copy of the repository: the git working tree without ignored files."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run_command(
    a: Analysis, workspace: Path, env: dict[str, str], warm: WarmInterpreter | None, log: Path
) -> int:
    text = a.command.text
    seg = [expand(t, env, workspace) for t in a.segments[0]] if len(a.segments) == 1 else []
    if warm is not None and not needs_shell(text) and seg:
        if seg[0] == "firmctl":
            return warm.run("script", [str(VENV_BIN / "firmctl"), *seg[1:]], workspace, env, log)
        if seg[0].startswith("python") and len(seg) > 2 and seg[1] == "-m":
            return warm.run("module", seg[2:], workspace, env, log)
        if seg[0].startswith("python") and len(seg) > 2 and seg[1] == "-c":
            return warm.run("code", seg[2:], workspace, env, log)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", text], cwd=workspace, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,
        )  # fmt: skip
        try:
            return proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


# Commands already run in another document's workspace: text → (where, that workspace, the files it wrote there).
REPLAY: dict[str, tuple[str, Path, list[str]]] = {}


def remember(text: str, where: str, workspace: Path, before: dict, after: dict) -> None:
    """Keep a command for replay when it only wrote files under runs/ that do not name its workspace."""
    written = sorted(k for k, v in after.items() if before.get(k) != v)
    if not written or not all(w.startswith("runs" + os.sep) for w in written):
        return
    marker = str(workspace).encode()
    if any(marker in (workspace / w).read_bytes() for w in written):
        return
    REPLAY.setdefault(text, (where, workspace, written))


def replay(text: str, workspace: Path) -> str | None:
    if RUN_ALL or text not in REPLAY:
        return None
    where, source, written = REPLAY[text]
    for rel in written:
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, workspace / rel)
    return where


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------ the test

DOCS = [d for d in documents() if commands_of(d)]


@pytest.fixture(scope="module")
def warm() -> Any:
    if RUN_ALL:
        yield None
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRM_")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    interpreter = WarmInterpreter(env)
    yield interpreter
    interpreter.close()


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_documented_commands(
    doc: Path, warm: WarmInterpreter | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = commands_of(doc)
    workspace = make_workspace(tmp_path / "checkout")
    logs = tmp_path / "logs"
    logs.mkdir()
    env = command_env(workspace)
    # the checks load recipes and configs the way the commands would: from the workspace, with its FIRM_HOME
    monkeypatch.chdir(workspace)
    for var in [k for k in os.environ if k.startswith("FIRM_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("FIRM_HOME", env["FIRM_HOME"])
    from firm.config import get_settings

    get_settings(fresh=True)

    unavailable: set[str] = set()
    done: set[str] = set()
    failures, summary = [], []
    for n, c in enumerate(commands):
        where = f"{c.doc}:{c.line}"
        a = analyse(c, workspace, unavailable)
        runs = a.cls == "run" or (RUN_ALL and a.cls == "trains")
        if a.cls in ("broken", "unknown"):
            failures.append(f"{where}: {c.text}\n    {'; '.join(a.reasons)}")
            summary.append(f"{where:<42} FAIL   {c.text[:90]}")
            continue
        if not runs:
            unavailable.update(a.outputs)
            try:
                check_without_running(a, workspace)
            except Exception as exc:
                failures.append(f"{where}: {c.text}\n    [{a.cls}] check failed: {type(exc).__name__}: {exc}")
                summary.append(f"{where:<42} FAIL   {c.text[:90]}")
            else:
                summary.append(f"{where:<42} {a.cls:<7} {c.text[:90]}  ({a.reasons[0] if a.reasons else ''})")
            continue
        if c.text in done:
            summary.append(f"{where:<42} again  {c.text[:90]}")
            continue
        try:
            for seg in a.segments:
                if seg[0] == "firmctl":
                    parse_firmctl(seg)
        except Exception as exc:
            failures.append(f"{where}: {c.text}\n    does not parse: {exc}")
            summary.append(f"{where:<42} FAIL   {c.text[:90]}")
            continue
        earlier = replay(c.text, workspace)
        if earlier is not None:
            done.add(c.text)
            summary.append(
                f"{where:<42} copied {c.text[:90]}  (ran at {earlier}: the files it wrote copied here)"
            )
            continue
        before = snapshot(workspace)
        t0 = time.perf_counter()
        rc = run_command(a, workspace, env, warm, logs / f"{n:03d}")
        seconds = time.perf_counter() - t0
        if rc != 0:
            failures.append(
                f"{where}: {c.text}\n    exit {rc} after {seconds:.1f}s; stderr:\n"
                + _tail(logs / f"{n:03d}.err")
                + "\n    stdout:\n"
                + _tail(logs / f"{n:03d}.out", 5)
            )
            summary.append(f"{where:<42} FAIL   {c.text[:90]}")
            continue
        done.add(c.text)
        remember(c.text, where, workspace, before, snapshot(workspace))
        summary.append(f"{where:<42} ran    {c.text[:90]}  ({seconds:.1f}s)")
    get_settings(fresh=True)
    print("\n".join(summary))
    assert not failures, "documented commands that fail as written:\n" + "\n".join(failures)


def test_the_documents_have_commands() -> None:
    """The extraction itself: the README's quickstart, a recipe's prepare command and a cluster command are seen."""
    readme = [c.text for c in markdown_commands(REPO / "README.md")]
    assert "make quickstart" in readme and any(t.startswith("helm install") for t in readme)
    tiny = [c.text for c in recipe_commands(REPO / "firm" / "recipes" / "rl" / "tiny_sd3_nft.yaml")]
    assert tiny[0].startswith("python -m firm.rl.policies.tiny sd3 ")
    assert all(any(t.startswith(w) for w in COMMAND_WORDS) for t in tiny)
    block = Command("x", 1, "echo '{\"a\": 1}' | firmctl critic parse --format edit > out.json  # note")
    assert segments(_strip_comment(block.text)) == [
        ["echo", '{"a": 1}'],
        ["firmctl", "critic", "parse", "--format", "edit"],
    ]


if __name__ == "__main__":  # list every command with its class, running nothing
    os.chdir(REPO)
    for d in DOCS:
        seen: set[str] = set()
        for cmd in commands_of(d):
            an = analyse(cmd, REPO, seen)
            seen.update(an.outputs if an.cls != "run" else [])
            print(f"{cmd.doc}:{cmd.line}\t{an.cls}\t{cmd.text}\n\t\t{'; '.join(an.reasons)}")
