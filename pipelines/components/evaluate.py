"""`eval_policy`: the policy before and after RL on the same prompts and reward (`firm.rl.evaluate`)."""

from kfp.dsl import HTML, Metrics, Output

from pipelines.components import component


@component
def eval_policy(
    recipe: str, overrides: list, lora_uri: str, reward_url: str, n_prompts: int, metrics: Output[Metrics],
    samples: Output[HTML],
) -> str:  # fmt: skip
    """Mean reward and sub-scores before/after, sample grids; returns the numbers as JSON (with a reward service:
    `served/<model>`, the server's own count of successful inferences per model so far)."""
    import json
    import tempfile

    from firm.recipes import resolve_config
    from firm.rl.config import load_config
    from firm.rl.evaluate import evaluate_policy
    from firm.rl.report import eval_html

    extra = ["reward.kind=triton", f"reward.url={reward_url}"] if reward_url else []
    cfg = load_config(resolve_config(recipe), [*overrides, *extra])
    with tempfile.TemporaryDirectory(prefix="firm-eval-") as tmp:
        result = evaluate_policy(cfg, lora_uri=lora_uri or None, out_dir=tmp, n_prompts=n_prompts)
        with open(samples.path, "w") as f:
            f.write(eval_html(result, title=f"Policy evaluation — {recipe}"))
    numbers = result.metrics()
    if reward_url:  # the server's own count: rewards of RL and of this evaluation really came through it
        from firm.serving.stats import served_inferences

        for model, count in served_inferences(reward_url).items():
            numbers[f"served/{model}"] = float(count)
    for key, value in numbers.items():
        metrics.log_metric(key.replace("/", "_"), value)
    return json.dumps(numbers)
