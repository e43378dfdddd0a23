"""The reward service on a real tritonserver (bundled binary + python backend), served from an s3:// repository."""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from firm.models.images import edit_pair, png_bytes, shapes_image
from firm.rewards.packs import load_pack
from firm.serving.client import RewardClient
from firm.serving.spec import SPECS
from tests.serving.conftest import MAX_NEW_TOKENS, MAX_PIXELS

pytestmark = pytest.mark.slow


def _inp(name: str, values: list[bytes], mod=grpcclient) -> object:
    arr = np.array([[v] for v in values], dtype=np.object_)
    i = mod.InferInput(name, list(arr.shape), "BYTES")
    i.set_data_from_numpy(arr)
    return i


def _edits(n: int) -> list[tuple[Image.Image, Image.Image, str]]:
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    out = []
    for k in range(n):
        src = shapes_image([("square", colours[k % 6])] * (1 + k % 3))
        dst = shapes_image([("circle", colours[(k + 1) % 6])] * (1 + (k + 1) % 4))
        out.append((src, dst, f"Turn the {colours[k % 6]} squares into {colours[(k + 1) % 6]} circles."))
    return out


@pytest.fixture(scope="module")
def grpc(server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture(scope="module")
def local_critic(server):
    """The same critic in-process, loaded from the repository the server fetched (same weights, same settings)."""
    from firm.critic.critic import Critic

    return Critic.from_pretrained(
        server.repository / "firm_engine" / "1" / "critic",
        max_pixels=MAX_PIXELS,
        max_new_tokens=MAX_NEW_TOKENS,
    )


def test_live_ready_metadata_and_config(server, grpc) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    assert grpc.is_server_live() and grpc.is_server_ready() and http.is_server_ready()
    for name, spec in SPECS.items():
        assert grpc.is_model_ready(name)
        meta = grpc.get_model_metadata(name, as_json=True)
        assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
            (t.name, t.dtype) for t in spec.inputs
        ]
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
            (t.name, t.dtype) for t in spec.outputs
        ]
        cfg = http.get_model_config(name)
        assert cfg["max_batch_size"] > 0 and cfg["platform"] == "ensemble"  # routed to firm_engine
        # the Triton config names the rubric pack the critic is asked with
        assert cfg["parameters"]["rubrics_sha256"]["string_value"] == load_pack().sha256
    engine = http.get_model_config("firm_engine")
    assert engine["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]
    assert engine["parameters"]["critic"]["string_value"] == "firm_engine/1/critic"
    with RewardClient(server.grpc_url) as client:
        assert client.served_rubrics() == load_pack().ref
    # Served from the s3:// repository, fetched into the local cache with its manifest.
    assert server.repository_uri.startswith("s3://") and (server.repository / "MANIFEST.json").exists()


def test_the_server_runs_without_auto_complete_and_with_a_short_metrics_interval(server) -> None:
    """The tritonserver every test of this module uses took both start-up flags (firm/serving/server.py): its models
    load from their declared configs without an auto-complete stub (test_live_ready_metadata_and_config checks
    what they serve), and its metrics thread wakes every 0.5 s, so a stop is quick."""
    argv = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode().split("\0")
    assert "--disable-auto-complete-config" in argv and "--metrics-interval-ms=500" in argv


def test_edit_reward_equals_in_process(grpc, local_critic) -> None:
    from firm.rewards.formulas import EditRewardConfig

    items = _edits(4)
    res = grpc.infer(
        "firm_edit_reward",
        [
            _inp("source_image", [png_bytes(s) for s, _, _ in items]),
            _inp("edited_image", [png_bytes(d) for _, d, _ in items]),
            _inp("instruction", [t.encode() for _, _, t in items]),
        ],
    )
    from firm.critic.critic import EditInput

    want = local_critic.edit_rewards(
        [EditInput(source=s, edited=d, instruction=t) for s, d, t in items],
        EditRewardConfig(),
        "skip",
        batch_size=8,
    )
    reward, status = res.as_numpy("reward")[:, 0], res.as_numpy("status")[:, 0]
    assert any(b.status == "ok" for b, _ in want)
    for k, (b, (e, c)) in enumerate(want):
        assert status[k].decode() == b.status
        assert (math.isnan(reward[k]) and b.reward is None) or reward[k] == pytest.approx(b.reward, abs=1e-6)
        assert res.as_numpy("execution")[k, 0] == pytest.approx(
            e.score[0] if isinstance(e.score, list) else e.score
        )
        assert res.as_numpy("consistency")[k, 0] == pytest.approx(
            c.score[0] if isinstance(c.score, list) else c.score
        )


def test_gen_reward_and_critic_equal_in_process(server, grpc, local_critic) -> None:
    from firm.critic.critic import CriticRequest, GenInput
    from firm.rewards.formulas import GenRewardConfig

    imgs = [shapes_image([("circle", "blue")] * k) for k in (1, 2, 3)]
    prompts = ["one blue circle", "two blue circles", "three blue circles"]
    with RewardClient(server.grpc_url, max_batch=3) as client:
        assert client.health() == {server.grpc_url: True}
        got = client.score_gen(list(zip(imgs, prompts, strict=True)))
    with RewardClient(server.grpc_url, edit_model="no_such_model", gen_model="no_such_model") as other:
        assert other.health() == {server.grpc_url: False}  # the server is up, but serves none of its models
    want = local_critic.gen_rewards(
        [GenInput(image=i, prompt=p) for i, p in zip(imgs, prompts, strict=True)],
        True,
        GenRewardConfig(),
        "skip",
        batch_size=6,
    )
    drop = {"confidence"}  # the service sends [p, entropy, std] (float32) in its own tensor
    assert [g.model_dump(exclude=drop) for g in got] == [w.model_dump(exclude=drop) for w, _ in want]
    for g, (w, _) in zip(got, want, strict=True):
        assert (g.confidence is None) == (w.confidence is None)
        if w.confidence is not None:
            assert g.confidence is not None
            assert (g.confidence.p, g.confidence.entropy, g.confidence.std) == pytest.approx(
                (w.confidence.p, w.confidence.entropy, w.confidence.std), abs=1e-5
            )
    assert all(g.reward is not None and 0.0 <= g.reward <= 1.0 for g in got if g.status == "ok")
    assert any(g.status == "ok" for g in got)
    # firm_critic: one quality judgement per row, same as Critic.judge
    res = grpc.infer(
        "firm_critic",
        [
            _inp("images", [png_bytes(i) for i in imgs]),
            _inp("rubric_id", [b"gen.quality.student.v1"] * 3),
            _inp("text", [b""] * 3),
        ],
    )
    js = local_critic.judge(
        [CriticRequest(task="gen", axis="quality", images=[i]) for i in imgs], batch_size=3
    )
    for k, j in enumerate(js):
        assert res.as_numpy("status")[k, 0].decode() == j.status
        if j.ok:
            assert res.as_numpy("score")[k].tolist() == [float(s) for s in j.score]
        assert res.as_numpy("raw_text")[k, 0].decode() == j.raw_text


def test_dynamic_batching_merges_concurrent_requests(server) -> None:
    src, dst, ins = edit_pair()
    payload = [png_bytes(src), png_bytes(dst), ins.encode()]

    async def fire(n: int) -> None:
        c = aioclient.InferenceServerClient(server.grpc_url)
        try:
            reqs = []
            for _ in range(n):
                inputs = [
                    _inp(nm, [v], aioclient)
                    for nm, v in zip(("source_image", "edited_image", "instruction"), payload, strict=True)
                ]
                reqs.append(c.infer("firm_edit_reward", inputs))
            await asyncio.gather(*reqs)
        finally:
            await c.close()

    def counts() -> tuple[int, int]:
        # firm_edit_reward is an ensemble: the batching happens in firm_engine behind it
        st = grpcclient.InferenceServerClient(server.grpc_url).get_inference_statistics(
            "firm_engine", as_json=True
        )
        s = st["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))

    inf0, exe0 = counts()
    asyncio.run(fire(16))
    # The python backend reports statistics after it has sent the responses: poll until all 16 are counted.
    deadline = time.monotonic() + 10
    while (inf1 := counts()[0]) - inf0 < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    inf1, exe1 = counts()
    assert inf1 - inf0 == 16
    assert exe1 - exe0 < 16, f"16 concurrent requests ran in {exe1 - exe0} executions"


def _bad_requests(good: list[bytes]) -> list[tuple[str, list]]:
    src, dst, ins = good
    big = io.BytesIO()
    Image.new("RGB", (5000, 4000)).save(big, format="PNG")  # 20 Mpx > the 16 Mpx decode budget
    zero = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    zero[16:24] = (0).to_bytes(4, "big") * 2  # IHDR width = height = 0
    names = ("source_image", "edited_image", "instruction")

    def req(s: bytes, d: bytes, t: bytes) -> list:
        return [_inp(n, [v]) for n, v in zip(names, (s, d, t), strict=True)]

    return [
        ("corrupt", req(src[:40] + b"\x00" * 50 + src[90:], dst, ins)),
        ("truncated", req(src[: len(src) // 2], dst, ins)),
        ("not an image", req(b"%PDF-1.4 hello", dst, ins)),
        ("empty bytes", req(b"", dst, ins)),
        ("zero-size", req(bytes(zero), dst, ins)),
        ("gigantic", req(big.getvalue(), dst, ins)),
        ("empty instruction", req(src, dst, b"   ")),
        ("non-utf8 instruction", req(src, dst, b"\xff\xfe\xfa")),
        ("missing input", req(src, dst, ins)[:2]),
        ("wrong dtype", [*req(src, dst, ins)[:2], _fp32("instruction")]),
        ("wrong shape", [*req(src, dst, ins)[:2], _two_cols("instruction", ins)]),
        ("batch too large", [_inp(n, [v] * 17) for n, v in zip(names, (src, dst, ins), strict=True)]),
    ]


def _fp32(name: str) -> object:
    i = grpcclient.InferInput(name, [1, 1], "FP32")
    i.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
    return i


def _two_cols(name: str, v: bytes) -> object:
    i = grpcclient.InferInput(name, [1, 2], "BYTES")
    i.set_data_from_numpy(np.array([[v, v]], dtype=np.object_))
    return i


def test_bad_input_battery_keeps_serving(server, grpc) -> None:
    src, dst, ins = edit_pair()
    good = [png_bytes(src), png_bytes(dst), ins.encode()]
    battery = _bad_requests(good)
    rss = []
    for _round in range(3):
        for what, inputs in battery:
            with pytest.raises(InferenceServerException) as exc:
                grpc.infer("firm_edit_reward", inputs)
            assert "INVALID_ARG" in str(exc.value.status()), (what, exc.value)
            assert exc.value.message(), what
        rss.append(server.rss_bytes())
    # a per-request error names the input
    with pytest.raises(InferenceServerException, match=r"source_image\[0\]"):
        grpc.infer("firm_edit_reward", battery[2][1])
    # good requests still succeed afterwards, also when batched with a bad one
    ok = grpc.infer(
        "firm_edit_reward",
        [_inp(n, [v]) for n, v in zip(("source_image", "edited_image", "instruction"), good, strict=True)],
    )
    assert ok.as_numpy("status")[0, 0] in (b"ok",) or ok.as_numpy("status")[0, 0].startswith(b"unparseable")
    assert rss[-1] - rss[0] < 40 * 2**20, (
        f"server RSS grew {(rss[-1] - rss[0]) / 2**20:.1f} MiB over bad requests"
    )
    metrics = urllib.request.urlopen(server.metrics_url).read().decode()
    invalid = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith('firm_invalid_requests_total{model="firm_edit_reward"')
    ]
    assert (
        invalid and float(invalid[0].split()[-1]) >= 3 * 8
    )  # the decode-level rejections counted by the backend
    assert "firm_reward_bucket" in metrics and "firm_judgements_total" in metrics
    scored = [
        ln for ln in metrics.splitlines() if ln.startswith('firm_reward_count{model="firm_edit_reward"}')
    ]
    assert scored and float(scored[0].split()[-1]) >= 1  # the reward histogram observed the good requests


def test_bad_requests_merged_with_good_ones_and_other_models(server, grpc) -> None:
    """Concurrent good and bad requests share a dynamic batch: only the bad ones fail, each with its own message.
    The same per-request rejection holds for firm_gen_reward and firm_critic."""
    src, dst, ins = edit_pair()
    good = [png_bytes(src), png_bytes(dst), ins.encode()]
    thin = png_bytes(
        Image.new("RGB", (1, 300))
    )  # decodes fine, but an aspect ratio above 200 cannot be judged
    truncated = good[0][: len(good[0]) // 2]
    payloads = [good, [thin, good[1], good[2]], good, [good[0], truncated, good[2]], good]
    names = ("source_image", "edited_image", "instruction")

    async def fire() -> list:
        c = aioclient.InferenceServerClient(server.grpc_url)
        try:
            reqs = [
                c.infer("firm_edit_reward", [_inp(n, [v], aioclient) for n, v in zip(names, p, strict=True)])
                for p in payloads
            ]
            return await asyncio.gather(*reqs, return_exceptions=True)
        finally:
            await c.close()

    results = asyncio.run(fire())
    for k in (0, 2, 4):
        assert not isinstance(results[k], Exception), results[k]
        assert results[k].as_numpy("status")[0, 0] == b"ok"
    for k, where, why in ((1, "source_image[0]", "aspect ratio"), (3, "edited_image[0]", "unreadable image")):
        assert isinstance(results[k], InferenceServerException), results[k]
        assert "INVALID_ARG" in str(results[k].status()) and where in results[k].message(), results[k]
        assert why in results[k].message()

    img, prompt = png_bytes(src), b"a red square"
    for inputs, match in (
        ([_inp("image", [img]), _inp("prompt", [b"\xc3\x28"])], r"prompt\[0\] is not valid UTF-8"),
        ([_inp("image", [truncated]), _inp("prompt", [prompt])], r"image\[0\]"),
        ([_inp("image", [img])], "prompt"),
    ):
        with pytest.raises(InferenceServerException, match=match) as exc:
            grpc.infer("firm_gen_reward", inputs)
        assert "INVALID_ARG" in str(exc.value.status())
    for rid, images, match in (
        (b"edit.execution.student.v9", [img, img], "v9"),
        (b"edit.execution.teacher.v1", [img, img], "teacher rubric"),
        (b"edit.execution.student.v1", [img], "needs 2 image"),
        (b"nonsense", [img, img], "malformed rubric id"),
    ):
        row = np.array([images], dtype=np.object_)
        imgs = grpcclient.InferInput("images", list(row.shape), "BYTES")
        imgs.set_data_from_numpy(row)
        with pytest.raises(InferenceServerException, match=match) as exc:
            grpc.infer("firm_critic", [imgs, _inp("rubric_id", [rid]), _inp("text", [ins.encode()])])
        assert "INVALID_ARG" in str(exc.value.status())
    assert grpc.is_server_ready() and all(grpc.is_model_ready(m) for m in SPECS)


def test_failover_and_serve_start_cli(server, tmp_path: Path, tiny_critic_dir: Path) -> None:
    """`firmctl serve start` on a second repository; SIGTERM it mid-run and the client fails over to the first."""
    import signal

    from firm.processes import free_port
    from firm.serving.export import ExportConfig, export_repository

    repo = export_repository(
        ExportConfig(
            critic=str(tiny_critic_dir),
            task="edit",
            max_new_tokens=8,
            max_pixels=MAX_PIXELS,
        ),
        tmp_path / "repo_b",
    )
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firm.cli.main",
            "serve",
            "start",
            "--repository",
            repo,
            "--grpc-port",
            str(port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once ready
        assert f'"grpc": "127.0.0.1:{port}"' in line, (
            line,
            proc.stderr.read() if proc.poll() is not None else "",
        )
        b = f"127.0.0.1:{port}"
        items = _edits(4)
        # B's critic is untaught and cut at 8 tokens: its failures show up per axis and status on B's metrics
        # (`truncated` apart from `unparseable`), under the public model that was asked.
        direct = grpcclient.InferenceServerClient(b).infer(
            "firm_edit_reward",
            [
                _inp("source_image", [png_bytes(s) for s, _, _ in items[:2]]),
                _inp("edited_image", [png_bytes(d) for _, d, _ in items[:2]]),
                _inp("instruction", [t.encode() for _, _, t in items[:2]]),
            ],
        )
        statuses = [x.decode() for x in direct.as_numpy("status")[:, 0]]
        assert all(math.isnan(r) for r in direct.as_numpy("reward")[:, 0]), statuses  # never a fabricated 0
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        for model in ("firm_edit_reward",):
            for axis in ("execution", "consistency"):
                lines = [
                    ln
                    for ln in metrics.splitlines()
                    if ln.startswith("firm_parse_failures_total{")
                    and f'axis="{axis}"' in ln
                    and f'model="{model}"' in ln
                ]
                failed = sum(float(ln.split()[-1]) for ln in lines)
                want = sum(st.endswith(f":{axis}") or f":{axis}," in st for st in statuses)
                assert failed == want > 0, (model, axis, statuses)
                by_status = {ln.split('status="')[1].split('"')[0] for ln in lines}
                assert by_status == {
                    st.split(":")[0] for part in statuses for st in part.split(",") if st.endswith(f":{axis}")
                }
        with RewardClient([b, server.grpc_url], max_batch=1, retries=3, backoff=0.05, cooldown=30) as client:
            assert client.health() == {b: True, server.grpc_url: True}
            first = client.score_edit(items)
            assert all(v > 0 for v in client.stats().values()), client.stats()  # both endpoints used
            proc.send_signal(signal.SIGTERM)  # forwarded to tritonserver
            assert proc.wait(timeout=60) == 0
            served_before = client.stats()[server.grpc_url]
            # dict items as the RL trainer sends them; requests routed to B fail UNAVAILABLE and are retried on A
            second = client.score_edit(
                [{"source_image": a, "edited_image": b_, "instruction": t} for a, b_, t in items]
            )
            assert len(first) == len(second) == 4
            assert client.stats()[server.grpc_url] - served_before == 4
            down = {e.url: e.down_until > time.monotonic() for e in client.endpoints}
            assert down == {b: True, server.grpc_url: False}  # B was tried, failed and is cooling down
            assert client.health() == {b: False, server.grpc_url: True}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_start_reports_model_load_failure(tmp_path: Path, tiny_critic_dir: Path) -> None:
    from firm.serving.export import ExportConfig, export_repository

    repo = Path(
        export_repository(
            ExportConfig(critic=str(tiny_critic_dir), task="gen", weights="reference"),
            tmp_path / "repo",
        )
    )
    cfg = repo / "firm_engine" / "config.pbtxt"  # the one model that loads the weights
    cfg.write_text(cfg.read_text().replace(str(tiny_critic_dir.resolve()), str(tmp_path / "missing-critic")))
    t = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "firm.cli.main",
            "serve",
            "start",
            "--repository",
            str(repo),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: tritonserver exited") and "failed to load 'firm_engine'" in r.stderr
    assert "missing-critic" in r.stderr and time.monotonic() - t < 120


def test_serve_score_cli(server, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from firm.cli.main import app

    src, dst, ins = edit_pair()
    src.save(tmp_path / "a.png")
    dst.save(tmp_path / "b.jpg", quality=95)
    r = CliRunner().invoke(
        app,
        [
            "serve",
            "score",
            "--endpoint",
            server.grpc_url,
            "--task",
            "edit",
            "--source",
            str(tmp_path / "a.png"),
            "--edited",
            str(tmp_path / "b.jpg"),
            "--instruction",
            ins,
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (
        out["task"] == "edit"
        and out["formulation"] == "cme"
        and set(out["raw_scores"]) == {"execution", "consistency"}
    )
    assert (out["reward"] is None) == (out["status"] != "ok")
    r = CliRunner().invoke(
        app,
        [
            "serve",
            "score",
            "--endpoint",
            server.grpc_url,
            "--task",
            "gen",
            "--image",
            str(tmp_path / "a.png"),
            "--prompt",
            "a red square",
        ],
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["task"] == "gen"
    (tmp_path / "bad.png").write_bytes(b"not a png")
    r = CliRunner().invoke(
        app,
        [
            "serve",
            "score",
            "--endpoint",
            server.grpc_url,
            "--task",
            "gen",
            "--image",
            str(tmp_path / "bad.png"),
            "--prompt",
            "x",
        ],
    )
    assert r.exit_code == 1 and r.stderr.startswith("error:") and "not an image" in r.stderr
    r = CliRunner().invoke(
        app,
        [
            "serve",
            "score",
            "--endpoint",
            server.grpc_url,
            "--task",
            "edit",
            "--source",
            str(tmp_path / "a.png"),
        ],
    )
    assert r.exit_code == 1 and "--edited" in r.stderr


def test_serve_start_sigterm_while_models_load(tmp_path: Path, tiny_critic_dir: Path) -> None:
    """SIGTERM before the server is ready is forwarded too: no endpoints printed, exit 128+15, no tritonserver left."""
    import os
    import signal

    from firm.processes import descendants as _descendants
    from firm.serving.export import ExportConfig, export_repository

    repo = export_repository(
        ExportConfig(critic=str(tiny_critic_dir), task="edit", weights="reference"),
        tmp_path / "repo",
    )
    ports = [a for p in ("--grpc-port", "--http-port", "--metrics-port") for a in (p, "0")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "firm.cli.main", "serve", "start", "--repository", repo, *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        triton: list[int] = []
        deadline = time.monotonic() + 60
        while not triton and time.monotonic() < deadline and proc.poll() is None:
            triton = [
                p
                for p in _descendants(proc.pid)
                if Path(f"/proc/{p}/comm").read_text().strip() == "tritonserver"
            ]
            time.sleep(0.02)
        assert triton, "tritonserver never started"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM and out == "", (proc.returncode, out, err)
        assert err.startswith("error: stopped by signal 15 while tritonserver was starting"), err
        with pytest.raises(ProcessLookupError):
            os.kill(triton[0], 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stubs(pid: int) -> dict[str, str]:
    """model name → memory map of its python-backend stub process, for tritonserver `pid`."""
    from firm.processes import descendants

    out = {}
    for p in descendants(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"triton_python_backend_stub"):
                out[Path(cmd[1].decode()).parents[1].name] = Path(f"/proc/{p}/maps").read_text()
        except (OSError, IndexError):
            continue
    return out


def _warm_memory(srv, models: tuple[str, ...]) -> dict[str, int]:
    """Send one request to each of `models`, then measure the server's process tree."""
    src, dst, ins = edit_pair()
    client = grpcclient.InferenceServerClient(srv.grpc_url)
    for model in models:
        if model == "firm_critic":
            arr = np.array([[png_bytes(src), png_bytes(dst)]], dtype=np.object_)
            images = grpcclient.InferInput("images", list(arr.shape), "BYTES")
            images.set_data_from_numpy(arr)
            inputs = [images, _inp("rubric_id", [b"edit.execution"]), _inp("text", [ins.encode()])]
        elif model == "firm_edit_reward":
            inputs = [_inp("source_image", [png_bytes(src)]), _inp("edited_image", [png_bytes(dst)]),
                      _inp("instruction", [ins.encode()])]  # fmt: skip
        else:
            inputs = [_inp("image", [png_bytes(dst)]), _inp("prompt", [b"A red circle."])]
        assert client.infer(model, inputs).as_numpy("status")[0, 0] == b"ok", model
    time.sleep(0.5)
    return srv.memory()


def test_one_copy_of_the_critic_per_server(formatted_critic_dir: Path, tmp_path: Path) -> None:
    """The three public models are ensembles over firm_engine: the server runs ONE python stub, which holds the
    weights, and stays within 1.2x the memory (PSS of the whole process tree) of a server with firm_critic alone.
    Both servers are fresh and get the same request on firm_critic (the full one also one per reward model)."""
    from firm.serving.export import ExportConfig, export_repository
    from firm.serving.server import TritonServer

    def export(task: str) -> str:
        cfg = ExportConfig(
            critic=str(formatted_critic_dir), task=task, max_new_tokens=MAX_NEW_TOKENS, max_pixels=MAX_PIXELS
        )
        return export_repository(cfg, tmp_path / task)

    with TritonServer(export("all")) as full:
        stubs = _stubs(full.process.pid)
        assert list(stubs) == ["firm_engine"] and "libtorch" in stubs["firm_engine"]
        all_three = _warm_memory(full, ("firm_critic", "firm_edit_reward", "firm_gen_reward"))
    with TritonServer(export("critic")) as alone:
        assert not grpcclient.InferenceServerClient(alone.grpc_url).is_model_ready("firm_edit_reward")
        one = _warm_memory(alone, ("firm_critic",))
    assert all_three["processes"] == one["processes"] == 2  # tritonserver + the engine's stub
    assert all_three["pss"] <= 1.2 * one["pss"], (all_three, one)


def test_confidence_output_for_a_batch_mixing_tasks(server, local_critic) -> None:
    """firm_critic, firm_edit_reward and firm_gen_reward requests sent together (one dynamic batch of the engine)
    each return the new `confidence` output — `[p, entropy, std]` equal to the in-process critic's, NaN where the
    answer did not parse — while the breakdown JSON is what it was before (no confidence in it)."""
    from firm.critic.critic import CriticRequest, EditInput, GenInput
    from firm.rewards.formulas import EditRewardConfig, GenRewardConfig
    from firm.schemas import RewardBreakdown

    ((src, dst, ins),) = _edits(1)
    img, prompt = shapes_image([("circle", "blue")] * 2), "two blue circles"

    async def fire() -> list:
        c = aioclient.InferenceServerClient(server.grpc_url)
        try:
            edit = [
                _inp(n, [v], aioclient)
                for n, v in zip(
                    ("source_image", "edited_image", "instruction"),
                    (png_bytes(src), png_bytes(dst), ins.encode()),
                    strict=True,
                )
            ]
            gen = [_inp("image", [png_bytes(img)], aioclient), _inp("prompt", [prompt.encode()], aioclient)]
            crit = [
                _inp("images", [png_bytes(img)], aioclient),
                _inp("rubric_id", [b"gen.quality.student.v1"], aioclient),
                _inp("text", [b""], aioclient),
            ]
            return await asyncio.gather(
                c.infer("firm_edit_reward", edit),
                c.infer("firm_gen_reward", gen),
                c.infer("firm_critic", crit),
            )
        finally:
            await c.close()

    edit_res, gen_res, crit_res = asyncio.run(fire())
    ((eb, _),) = local_critic.edit_rewards(
        [EditInput(source=src, edited=dst, instruction=ins)], EditRewardConfig()
    )
    ((gb, _),) = local_critic.gen_rewards([GenInput(image=img, prompt=prompt)], True, GenRewardConfig())
    (qj,) = local_critic.judge([CriticRequest(task="gen", axis="quality", images=[img])])
    for res, want in ((edit_res, eb.confidence), (gen_res, gb.confidence), (crit_res, qj.confidence)):
        got = res.as_numpy("confidence")
        assert got.shape == (1, 3) and got.dtype == np.float32
        if want is None:
            assert np.isnan(got).all()
        else:
            assert got[0].tolist() == pytest.approx([want.p, want.entropy, want.std], abs=1e-5)
    assert any(w is not None for w in (eb.confidence, gb.confidence, qj.confidence))
    for res in (edit_res, gen_res):
        raw = json.loads(bytes(res.as_numpy("breakdown")[0, 0]))
        assert "confidence" not in raw  # older clients validate the breakdown with extra="forbid"
        RewardBreakdown.model_validate(raw)
    with RewardClient(server.grpc_url) as client:
        (b,) = client.score_edit([(src, dst, ins)])
    assert (b.confidence is None) == (eb.confidence is None)
    if b.confidence is not None:
        assert b.confidence.p == pytest.approx(eb.confidence.p, abs=1e-5)


def test_client_without_confidence_output_falls_back(server) -> None:
    """A service exported before the `confidence` output: the client asks again without it (breakdowns, no
    confidence) — simulated by an endpoint URL the client marks as such."""
    with RewardClient(server.grpc_url) as client:
        client._without_confidence.add(server.grpc_url)
        (b,) = client.score_gen([(shapes_image([("circle", "blue")]), "one blue circle")])
    assert b.confidence is None and b.status
