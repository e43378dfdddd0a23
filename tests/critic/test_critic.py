"""The Critic on tiny Qwen3-VL models: prompts, batching, both readouts, round trips and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from firm.critic import Critic, CriticRequest, EditInput, GenInput, build_messages
from firm.critic.critic import TEACHER_FORCED, _expected_min
from firm.errors import InputError
from firm.models.images import edit_pair, png_bytes, shapes_image
from firm.rewards.packs import get_rubric


def _mixed_requests() -> list[CriticRequest]:
    """Every task/axis, images of different sizes so that batches need padding."""
    src, dst, instruction = edit_pair("blue", "red", "circle")
    wide = shapes_image([("square", "yellow"), ("triangle", "green")], size=(112, 56))
    return [
        CriticRequest(
            task="edit", axis="execution", images=[src, dst], instruction=instruction, sample_id="e1"
        ),
        CriticRequest(
            task="edit",
            axis="consistency",
            images=[src, wide],
            instruction="Add a yellow square.",
            sample_id="e2",
        ),
        CriticRequest(
            task="gen",
            axis="instruction",
            images=[wide],
            prompt="a yellow square and a green triangle",
            sample_id="g1",
        ),
        CriticRequest(task="gen", axis="quality", images=[dst], sample_id="g2"),
        CriticRequest(task="gen", axis="instruction", images=[src], prompt="a red circle", sample_id="g3"),
    ]


def test_two_image_prompt_has_both_images_tokens(tiny_critic: Critic) -> None:
    small = shapes_image(size=(56, 56))
    large = shapes_image([("circle", "blue")], size=(112, 112))
    rubric = get_rubric("edit", "execution")
    msgs = build_messages(rubric, [small, large], instruction="Make it blue.")
    assert [c["type"] for c in msgs[0]["content"]] == ["image", "image", "text"]
    assert msgs[0]["content"][0]["image"] is small  # source first, edited second
    prompt = tiny_critic.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert prompt.count("<|vision_start|>") == 2
    enc = tiny_critic._encode([prompt], [small, large])
    merge = tiny_critic.processor.image_processor.merge_size
    per_image = (enc["image_grid_thw"].prod(-1) // merge**2).tolist()
    assert per_image == [4, 16]  # 56² → 2×2 merged patches, 112² → 4×4
    n_image_tokens = int((enc["input_ids"] == tiny_critic.processor.image_token_id).sum())
    assert n_image_tokens == sum(per_image)
    assert 'Editing instruction: "Make it blue."' in prompt


def test_batched_equals_unbatched_both_readouts(tiny_critic: Critic) -> None:
    reqs = _mixed_requests()
    tiny_critic.tokenizer.padding_side = "right"  # a shared processor set up for training must not matter
    for readout in ("text", "expected"):
        batched = tiny_critic.judge(reqs, readout=readout, batch_size=16)
        single = [tiny_critic.judge([r], readout=readout, batch_size=1)[0] for r in reqs]
        for b, s in zip(batched, single, strict=True):
            assert b.raw_text == s.raw_text and b.status == s.status and b.score == s.score
            assert (b.expected_score is None) == (readout == "text")
            if readout == "expected":
                assert b.expected_score == pytest.approx(s.expected_score, abs=1e-4)
        assert [j.sample_id for j in batched] == [r.sample_id for r in reqs]
        assert [(j.task, j.axis) for j in batched] == [(r.task, r.axis) for r in reqs]
    assert tiny_critic.tokenizer.padding_side == "right"  # and the critic does not change it
    tiny_critic.tokenizer.padding_side = "left"
    assert tiny_critic.judge([]) == []


def test_untrained_text_readout_never_invents_a_score(tiny_critic: Critic) -> None:
    """The random tiny critic writes byte soup: text readout reports the failure, expected readout still reads a
    proper probability-weighted value in [1, 5] by teacher-forcing the answer skeleton."""
    reqs = _mixed_requests()
    text = tiny_critic.judge(reqs, readout="text")
    expected = tiny_critic.judge(reqs, readout="expected")
    for t, e in zip(text, expected, strict=True):
        if t.status != "ok":
            assert t.score is None and e.score is None and e.status == t.status
            assert e.parsed_from == TEACHER_FORCED
        assert t.expected_score is None
        assert e.expected_score is not None and 1.0 <= e.expected_score <= 5.0
    values = [e.expected_score for e in expected]
    assert not all(float(v).is_integer() for v in values)  # a weighted mean, not a rounded digit
    assert len({round(v, 6) for v in values}) > 1  # depends on the input


def test_expected_readout_reads_the_generated_score_token(formatted_critic: Critic) -> None:
    """On the format-taught critic the score digit is found among the generated tokens; recomputing the digit
    distribution with a plain forward pass over prompt + answer-up-to-the-digit gives the same expected value."""
    reqs = _mixed_requests()
    js = formatted_critic.judge(reqs, readout="expected")
    assert all(j.status == "ok" for j in js), [j.raw_text for j in js]
    for req, j in zip(reqs, js, strict=True):
        assert TEACHER_FORCED not in (j.parsed_from or "")
        assert j.parsed_from in ("json", "boxed", "rating_line", "regex")
        assert 1.0 <= j.expected_score <= 5.0
        if req.axis == "quality":
            assert isinstance(j.score, list) and len(j.score) == 3
            continue
        from firm.rewards.parsing import parse_answer

        span = parse_answer(
            formatted_critic.rubric(req.task, req.axis).answer_format, j.raw_text
        ).score_spans[0]
        _, prompt, images = formatted_critic._prepare(req, 0)
        enc = formatted_critic._encode(
            [prompt + j.raw_text[: span[0]]], images, formatted_critic._batch_size([(req, prompt, images)])
        )
        with torch.inference_mode():
            last = formatted_critic.model(**enc).logits[0, -1].float()
        p = torch.softmax(last[formatted_critic.digit_ids], -1)
        manual = float((p * torch.arange(1, 6)).sum())
        assert j.expected_score == pytest.approx(manual, abs=1e-3)
        assert int(p.argmax()) + 1 == j.score  # greedy wrote the most likely digit


def test_expected_min_of_digit_distributions() -> None:
    one_hot = [torch.eye(5)[k - 1] for k in (4, 2, 5)]
    assert _expected_min(one_hot) == pytest.approx(2.0)
    p = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])
    assert _expected_min([p]) == pytest.approx(float((p * torch.arange(1, 6)).sum()))
    uniform = torch.full((5,), 0.2)
    # E[min of two uniform 1..5] = Σ_k ((6-k)/5)² = (25+16+9+4+1)/25 = 2.2
    assert _expected_min([uniform, uniform]) == pytest.approx(2.2)


def test_score_edit_scores_both_axes_in_one_generate_call(formatted_critic: Critic) -> None:
    calls: list[int] = []
    original = formatted_critic.model.generate

    def counting_generate(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(int(kwargs["input_ids"].shape[0]))
        return original(*args, **kwargs)

    src, dst, instruction = edit_pair()
    items = [EditInput(source=src, edited=dst, instruction=instruction, sample_id=f"s{i}") for i in range(3)]
    formatted_critic.model.generate = counting_generate
    try:
        pairs = formatted_critic.score_edit(items, batch_size=16)
    finally:
        del formatted_critic.model.generate
    assert calls == [6]
    assert [(e.axis, c.axis) for e, c in pairs] == [("execution", "consistency")] * 3
    assert [e.sample_id for e, _ in pairs] == ["s0", "s1", "s2"]


def test_reward_helpers_combine_with_the_formulas(formatted_critic: Critic, tmp_path: Path) -> None:
    from firm.rewards.formulas import EditRewardConfig, GenRewardConfig, cme, qma
    from firm.schemas import EditSample, GenSample

    src, dst, instruction = edit_pair()
    src.save(tmp_path / "src.png")
    dst.save(tmp_path / "dst.png")
    sample = EditSample(
        id="x",
        source_image=str(tmp_path / "src.png"),
        edited_image=str(tmp_path / "dst.png"),
        instruction=instruction,
    )
    [(reward, (e, c))] = formatted_critic.edit_rewards([sample])
    assert e.sample_id == "x" and reward.status == "ok" and reward.formulation == "cme"
    assert reward.reward == pytest.approx(cme((e.score - 1) / 4, (c.score - 1) / 4))
    [(reward_x, (e_x, c_x))] = formatted_critic.edit_rewards([sample], EditRewardConfig(readout="expected"))
    assert reward_x.reward == pytest.approx(cme((e_x.expected_score - 1) / 4, (c_x.expected_score - 1) / 4))

    gen = GenSample(id="g", prompt="two shapes", image=str(tmp_path / "dst.png"))
    [(greward, (i, q))] = formatted_critic.gen_rewards([gen], quality=True, config=GenRewardConfig())
    assert greward.formulation == "qma"
    assert greward.reward == pytest.approx(qma((i.score - 1) / 4, (min(q.score) - 1) / 4))
    [(only_i, (i2, q2))] = formatted_critic.gen_rewards([gen], quality=False)
    assert (
        q2 is None
        and only_i.formulation == "instruction"
        and only_i.reward == pytest.approx((i2.score - 1) / 4)
    )


def test_save_load_round_trip_identical_logits_and_judgements(tiny_critic: Critic, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    tiny_critic.model.save_pretrained(out)
    tiny_critic.processor.save_pretrained(out)
    again = Critic.from_pretrained(out, max_new_tokens=tiny_critic.max_new_tokens)
    req = _mixed_requests()[0]
    _, prompt, images = tiny_critic._prepare(req, 0)
    with torch.inference_mode():
        a = tiny_critic.model(**tiny_critic._encode([prompt], images)).logits
        b = again.model(**again._encode([prompt], images)).logits
    assert torch.equal(a, b)
    reqs = _mixed_requests()
    assert tiny_critic.judge(reqs, readout="expected") == again.judge(reqs, readout="expected")


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_from_published_uri_and_dtype(
    scheme: str, tiny_critic_dir: Path, tiny_critic: Critic, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from firm.config import get_settings
    from firm.storage import S3Store, publish_dir

    if scheme == "s3":
        env = request.getfixturevalue("s3_env")
        S3Store.from_settings(env["bucket"], get_settings(fresh=True)).make_bucket()
        uri = f"s3://{env['bucket']}/critics/tiny"
    else:
        uri = (tmp_path / "store" / "critics" / "tiny").as_uri()
    home = request.getfixturevalue("fresh_home")
    publish_dir(tiny_critic_dir, uri)
    published = Critic.from_pretrained(uri, max_new_tokens=tiny_critic.max_new_tokens)
    assert home in Path(published.model.name_or_path).parents  # fetched into the verified cache
    reqs = _mixed_requests()[:2]
    assert published.judge(reqs) == tiny_critic.judge(reqs)
    if scheme == "file":
        half = Critic.from_pretrained(tiny_critic_dir, dtype="bfloat16", max_new_tokens=4)
        assert half.model.dtype == torch.bfloat16
        js = half.judge(reqs, readout="expected")
        assert all(1.0 <= j.expected_score <= 5.0 for j in js)


def test_huge_image_is_resized_to_the_pixel_budget(tiny_critic: Critic) -> None:
    huge = Image.new("RGB", (4000, 3000), (200, 100, 50))
    req = CriticRequest(task="gen", axis="quality", images=[huge])
    _, prompt, images = tiny_critic._prepare(req, 0)
    w, h = images[0].size
    assert w * h <= tiny_critic.max_pixels and w % tiny_critic.factor == 0 and h % tiny_critic.factor == 0
    [j] = tiny_critic.judge([req], readout="expected")
    assert 1.0 <= j.expected_score <= 5.0
    custom = Critic(tiny_critic.model, tiny_critic.processor, max_pixels=56 * 56, max_new_tokens=2)
    assert custom.max_pixels == 56 * 56
    _, _, images = custom._prepare(req, 0)
    assert images[0].size[0] * images[0].size[1] <= 56 * 56
    enc = custom._encode([prompt], images)
    w, h = images[0].size
    assert (w, h) == (56, 28)  # 4:3 kept as closely as 28-pixel steps allow
    assert int((enc["input_ids"] == custom.processor.image_token_id).sum()) == (w // 28) * (h // 28)
    assert tiny_critic.max_pixels == 112 * 112  # the shared processor was not changed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "video", "axis": "execution"}, "unknown task 'video'"),
        ({"task": "edit", "axis": "quality"}, "unknown axis 'quality' for task 'edit'"),
        ({"task": "edit", "axis": "execution", "instruction": "   "}, "instruction must not be empty"),
        ({"task": "gen", "axis": "instruction", "prompt": ""}, "prompt must not be empty"),
        ({"task": "gen", "axis": "quality", "n_images": 2}, "needs 1 image"),
        ({"task": "edit", "axis": "consistency", "instruction": "x", "n_images": 1}, "needs 2 image"),
    ],
)
def test_bad_requests_raise_input_error(kwargs: dict, message: str) -> None:
    kwargs = dict(kwargs)
    n = kwargs.pop("n_images", 2 if kwargs["task"] == "edit" else 1)
    kwargs.setdefault("instruction", "Make it blue.")
    kwargs.setdefault("prompt", "a red square")
    with pytest.raises(InputError, match=message):
        CriticRequest(images=[shapes_image()] * n, sample_id="bad-1", **kwargs)


def test_bad_images_fail_before_any_generation(tiny_critic: Critic, tmp_path: Path) -> None:
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    good = png_bytes(shapes_image())
    cases = [
        (
            EditInput(source=good, edited=str(not_image), instruction="x", sample_id="s1"),
            f"edited image of sample s1 \\({not_image}\\): not an image file",
        ),
        (
            EditInput(source=str(empty), edited=good, instruction="x", sample_id="s2"),
            "source image of sample s2 .*empty file",
        ),
        (
            EditInput(source=str(tmp_path / "gone.png"), edited=good, instruction="x", sample_id="s3"),
            "no such file",
        ),
    ]
    calls: list[int] = []
    tiny_critic.model.generate = lambda *a, **k: calls.append(1)  # must never be reached
    try:
        for item, message in cases:
            with pytest.raises(InputError, match=message):
                tiny_critic.score_edit([EditInput(source=good, edited=good, instruction="ok"), item])
        with pytest.raises(InputError, match="image of sample g1: unsupported image source type list"):
            tiny_critic.score_gen([GenInput(image=[good, good], prompt="p", sample_id="g1")])
    finally:
        del tiny_critic.model.generate
    assert calls == []
    with pytest.raises(InputError, match="unknown readout 'logits'"):
        tiny_critic.judge([], readout="logits")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"critic model '\./no/such/dir': no such directory"):
        Critic.from_pretrained("./no/such/dir")


def test_model_dir_is_untouched_by_loading(tiny_critic_dir: Path, tmp_path: Path) -> None:
    """Loading must not write into the model directory (they are shared, read-only artefacts)."""
    copy = tmp_path / "ro"
    shutil.copytree(tiny_critic_dir, copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    Critic.from_pretrained(copy, max_new_tokens=2)
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before


def test_non_vision_or_bad_dtype_model_is_a_config_error(tiny_critic_dir: Path, tmp_path: Path) -> None:
    from transformers import Qwen3Config

    from firm.errors import ConfigError

    text_only = tmp_path / "text-only"
    Qwen3Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        text_only
    )
    with pytest.raises(ConfigError, match="not an image-text-to-text model"):
        Critic.from_pretrained(text_only)
    with pytest.raises(ConfigError, match="unknown dtype 'nn'"):
        Critic.from_pretrained(tiny_critic_dir, dtype="nn")


def test_broken_model_dirs_and_devices_are_clear_errors(tiny_critic_dir: Path, tmp_path: Path) -> None:
    """A directory without a usable config, a config without weights, or an unknown/unavailable device: one
    FIRM error naming the input, never a transformers/torch traceback."""
    from firm.errors import ConfigError

    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "notes.txt").write_text("not a model")
    with pytest.raises(InputError, match="no-config: cannot load its config"):
        Critic.from_pretrained(no_config)
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{")
    with pytest.raises(InputError, match="bad-json: cannot load its config"):
        Critic.from_pretrained(bad_json)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_critic_dir / "config.json", no_weights / "config.json")
    with pytest.raises(InputError, match="no-weights: cannot load its weights"):
        Critic.from_pretrained(no_weights)
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        Critic.from_pretrained(tiny_critic_dir, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Critic.from_pretrained(tiny_critic_dir, device="cuda")


def test_score_digit_location_and_full_width_fallback(tiny_critic: Critic) -> None:
    """The span → token mapping finds an ASCII score digit; a full-width digit (several byte tokens) parses as a
    text score but cannot be read at a digit token, so the expected readout must fall back (None here)."""
    from firm.rewards.parsing import parse_answer

    tok = tiny_critic.tokenizer
    for answer, found in (
        ('{"reasoning": "ok", "score": [4]}', True),
        ('{"reasoning": "ok", "score": [４]}', False),
    ):
        ids = tok.encode(answer, add_special_tokens=False)
        text = tok.decode(ids)
        parsed = parse_answer("edit", text)
        assert parsed.ok and parsed.score == 4
        logits = torch.zeros(len(ids), 5)
        digit_pos = [i for i, t in enumerate(ids) if t in tiny_critic.digit_ids]
        for i in digit_pos:
            logits[i] = torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0])  # mass on "4" only where a digit token is
        got = tiny_critic._expected_from_generation(ids, text, parsed, logits)
        if found:
            p = torch.softmax(torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0]), -1)
            assert got == pytest.approx(float((p * torch.arange(1, 6)).sum()))  # read at the "4" token
        else:
            assert got is None


def test_confidence_from_the_same_pass_both_readouts(formatted_critic: Critic) -> None:
    """Every parsed judgement carries the confidence of the digit it wrote, identical in both readouts (read from
    the same recorded digit logits); the probability is that of the written digit under the digit softmax."""
    reqs = _mixed_requests()
    text = formatted_critic.judge(reqs, readout="text")
    expected = formatted_critic.judge(reqs, readout="expected")
    assert all(j.ok for j in text)
    for req, t, e in zip(reqs, text, expected, strict=True):
        assert t.confidence is not None and e.confidence is not None
        for field in ("p", "entropy", "std"):
            assert getattr(t.confidence, field) == pytest.approx(getattr(e.confidence, field), abs=1e-5)
        assert t.confidence.probs == pytest.approx(e.confidence.probs, abs=1e-5)
        c = t.confidence
        assert 0.0 < c.p <= 1.0 and 0.0 <= c.entropy <= 1.61 and 0.0 <= c.std <= 2.0
        assert c.probs is not None and sum(c.probs) == pytest.approx(1.0)
        if req.axis == "quality":
            assert isinstance(t.score, list) and c.sub is not None and len(c.sub) == 3
            assert [s.p for s in c.sub] == pytest.approx(
                [s.probs[k - 1] for s, k in zip(c.sub, t.score, strict=True)]
            )
            assert c.p == pytest.approx(c.probs[min(t.score) - 1])
            # E[min] of the sub-score distributions is the expected readout's value
            assert sum((k + 1) * p for k, p in enumerate(c.probs)) == pytest.approx(
                e.expected_score, abs=1e-4
            )
        else:
            assert c.p == pytest.approx(c.probs[t.score - 1]) and c.sub is None
            assert sum((k + 1) * p for k, p in enumerate(c.probs)) == pytest.approx(
                e.expected_score, abs=1e-4
            )
    off = formatted_critic.judge(reqs, readout="text", confidence=False)
    assert all(j.confidence is None for j in off)
    assert [j.raw_text for j in off] == [j.raw_text for j in text]
    # the reward helpers carry the joint confidence
    src, dst, instruction = edit_pair()
    ((b, (ej, cj)),) = formatted_critic.edit_rewards(
        [EditInput(source=src, edited=dst, instruction=instruction)]
    )
    assert b.confidence is not None and b.confidence.p == pytest.approx(ej.confidence.p * cj.confidence.p)


def test_failed_parse_has_no_confidence(tiny_critic: Critic) -> None:
    """The random critic's byte soup does not parse: no confidence in either readout, although the expected
    readout still teacher-forces an expected score."""
    reqs = _mixed_requests()
    for readout in ("text", "expected"):
        js = tiny_critic.judge(reqs, readout=readout)
        assert any(not j.ok for j in js)
        for j in js:
            if not j.ok:
                assert j.confidence is None and j.score is None
            else:
                assert j.confidence is not None
