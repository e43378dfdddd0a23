"""Reward-hacking alarms: read the step metrics and the critic audits of an RL run and say when it hacks its critic.

Each alarm has its threshold in the recipe's `audit` section (`firm.rl.config.AuditConfig`; None switches it off):

- `identity_copies` (editing): the fraction of samples that copy their source (1 − mean|edit − source| ≥
  `identity_similarity`) *and* that the critic rewarded (reward ≥ `identity_reward`) is above `identity_rate`
  (metric `hacking/identity_rate`) for `patience` steps;
- `parse_failures`: the step's parse-failure rate is above `parse_failure_rate` for `patience` steps, or an audit's is;
- `zero_variance`: more than `zero_variance_ratio` of the step's groups have identical rewards (no signal left:
  `groups/zero_std_ratio`) for `patience` steps;
- `subscore_collapse`: over the last `window` steps one sub-score fell by more than `subscore_drop` while the mean
  reward rose (the means of the window's first and second halves);
- `reward_up_mae_worse`: an audit's MAE is more than `mae_rise` above the first audit's while the mean reward (over the
  `window` steps before each audit) rose.

An alarm fires once when its condition starts (and again if it stops and starts again). `alarm: stop` turns a fired
alarm into `AlarmStop`: the run publishes its last good checkpoint (the newest state whose rollouts met no alarm
condition), writes `alarm.json` next to its checkpoints and exits with `ALARM_EXIT_CODE` and status
`stopped_by_alarm`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from firm.errors import FirmError

# < 128: the Training Operator's ExitCode restart policy fails the job instead of retrying it (a restarted run would
# hack its critic again); 1 = an error, 3 = OOM (firm.launch.torchrun_quiet)
ALARM_EXIT_CODE = 4
STOPPED_BY_ALARM = "stopped_by_alarm"
SUB_SCORES = ("execution", "consistency", "instruction", "quality")


@dataclass
class Alarm:
    """One fired alarm: which, at which step (0-based, as in metrics.jsonl), and the values that made it fire."""

    name: str
    step: int
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name} alarm at step {self.step}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AlarmStop(FirmError):
    """An alarm fired with `audit.alarm: stop`: the run ends `stopped_by_alarm`."""

    def __init__(self, alarm: Alarm, checkpoint: str | None = None) -> None:
        self.alarm, self.checkpoint = alarm, checkpoint
        where = f"; last good checkpoint {checkpoint}" if checkpoint else "; no good checkpoint to keep"
        super().__init__(f"{STOPPED_BY_ALARM}: {alarm.line()}{where}")


def _half_means(xs: list[float]) -> tuple[float, float]:
    h = max(len(xs) // 2, 1)
    return sum(xs[:h]) / h, sum(xs[-h:]) / h


class Alarms:
    """The alarm state of one run (identical on every rank: it only reads all-reduced metrics)."""

    def __init__(self, cfg: Any, task: str) -> None:
        self.cfg, self.task = cfg, task
        self.streak: dict[str, int] = {}
        self.active: set[str] = (
            set()
        )  # conditions true at the last check (an alarm fires when its condition starts)
        self.history: list[dict[str, float]] = []  # per step: reward/mean and the sub-scores
        self.first_audit: dict[str, float] | None = None
        self.fired: list[Alarm] = []
        self.condition = False  # any alarm condition at the last step (the state is not "good")

    # ------------------------------------------------------------------------------------------------- per step
    def _per_step(
        self, name: str, over: bool, step: int, message: str, evidence: dict[str, Any]
    ) -> Alarm | None:
        self.streak[name] = self.streak.get(name, 0) + 1 if over else 0
        if not over:
            self.active.discard(name)
            return None
        self.condition = True
        if self.streak[name] < self.cfg.patience or name in self.active:
            return None
        self.active.add(name)
        return Alarm(name, step, message, {"step": step, "steps": self.streak[name], **evidence})

    def _trend(
        self, name: str, over: bool, step: int, message: str, evidence: dict[str, Any]
    ) -> Alarm | None:
        if not over:
            self.active.discard(name)
            return None
        self.condition = True
        if name in self.active:
            return None
        self.active.add(name)
        return Alarm(name, step, message, {"step": step, **evidence})

    def check_step(self, step: int, m: dict[str, Any]) -> list[Alarm]:
        """The alarms that fire at `step` (its metrics `m`)."""
        c = self.cfg
        self.condition = False
        out: list[Alarm | None] = []
        if self.task == "edit" and c.identity_rate is not None and "hacking/identity_rate" in m:
            rate = float(m["hacking/identity_rate"])
            out.append(self._per_step(
                "identity_copies", rate > c.identity_rate, step,
                f"{rate:.0%} of the samples are rewarded identity copies (similarity ≥ {c.identity_similarity}, "
                f"reward ≥ {c.identity_reward}), above audit.identity_rate={c.identity_rate}",
                {"identity_rate": rate, "threshold": c.identity_rate,
                 "source_similarity": m.get("hacking/source_similarity"), "reward_mean": m.get("reward/mean")},
            ))  # fmt: skip
        if c.parse_failure_rate is not None:
            rate = float(m.get("reward/parse_failure_rate", 0.0))
            out.append(self._per_step(
                "parse_failures", rate > c.parse_failure_rate, step,
                f"parse-failure rate {rate:.0%} above audit.parse_failure_rate={c.parse_failure_rate}",
                {"parse_failure_rate": rate, "threshold": c.parse_failure_rate},
            ))  # fmt: skip
        if c.zero_variance_ratio is not None and "groups/zero_std_ratio" in m:
            ratio = float(m["groups/zero_std_ratio"])
            out.append(self._per_step(
                "zero_variance", ratio > c.zero_variance_ratio, step,
                f"{ratio:.0%} of the groups have identical rewards, above audit.zero_variance_ratio="
                f"{c.zero_variance_ratio}",
                {"zero_std_ratio": ratio, "threshold": c.zero_variance_ratio},
            ))  # fmt: skip
        row = {
            k: float(m[k]) for k in ("reward/mean", *(f"reward/{s}" for s in SUB_SCORES)) if _finite(m.get(k))
        }
        self.history = [*self.history, row][-max(c.window, 2) :]
        if c.subscore_drop is not None:
            out.append(self._subscore(step))
        fired = [a for a in out if a is not None]
        self.fired += fired
        return fired

    def _subscore(self, step: int) -> Alarm | None:
        c = self.cfg
        hist = self.history
        rewards = [h["reward/mean"] for h in hist if "reward/mean" in h]
        worst: tuple[float, str, float, float] | None = None
        if len(hist) >= c.window and len(rewards) == len(hist):
            r0, r1 = _half_means(rewards)
            for s in SUB_SCORES:
                vals = [h[f"reward/{s}"] for h in hist if f"reward/{s}" in h]
                if len(vals) != len(hist):
                    continue
                v0, v1 = _half_means(vals)
                if r1 > r0 and v0 - v1 > c.subscore_drop and (worst is None or v0 - v1 > worst[0]):
                    worst = (v0 - v1, s, v0, v1)
        if worst is None:
            return self._trend("subscore_collapse", False, step, "", {})
        _, s, v0, v1 = worst
        r0, r1 = _half_means(rewards)
        return self._trend(
            "subscore_collapse", True, step,
            f"reward/{s} fell {v0:.3f} → {v1:.3f} (by more than audit.subscore_drop={c.subscore_drop}) over "
            f"{len(hist)} steps while reward/mean rose {r0:.3f} → {r1:.3f}",
            {"sub_score": s, "from": v0, "to": v1, "reward_from": r0, "reward_to": r1, "threshold": c.subscore_drop},
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------------- per audit
    def check_audit(self, step: int, audit: dict[str, Any]) -> list[Alarm]:
        """The alarms an audit (its `audit/*` metrics, after `step`) fires."""
        c = self.cfg
        out: list[Alarm | None] = []
        rewards = [h["reward/mean"] for h in self.history if "reward/mean" in h]
        reward = sum(rewards) / len(rewards) if rewards else math.nan
        mae = audit.get("audit/mae")
        if self.first_audit is None and _finite(mae):
            self.first_audit = {"mae": float(mae), "reward": reward, "step": float(step)}  # type: ignore[arg-type]
        elif c.mae_rise is not None and _finite(mae) and self.first_audit is not None:
            base = self.first_audit
            worse = float(mae) - base["mae"] > c.mae_rise and _finite(reward) and reward > base["reward"]  # type: ignore[arg-type]
            out.append(self._trend(
                "reward_up_mae_worse", worse, step,
                f"audit MAE {base['mae']:.3f} → {float(mae):.3f} (step {int(base['step'])} → {step}, more than "  # type: ignore[arg-type]
                f"audit.mae_rise={c.mae_rise}) while the mean reward rose {base['reward']:.3f} → {reward:.3f}",
                {"mae_from": base["mae"], "mae_to": mae, "reward_from": base["reward"], "reward_to": reward,
                 "from_step": int(base["step"]), "threshold": c.mae_rise},
            ))  # fmt: skip
        rate = audit.get("audit/parse_failure_rate")
        if c.parse_failure_rate is not None and _finite(rate) and float(rate) > c.parse_failure_rate:  # type: ignore[arg-type]
            out.append(Alarm(
                "parse_failures", step,
                f"audit parse-failure rate {float(rate):.0%} above audit.parse_failure_rate={c.parse_failure_rate}",  # type: ignore[arg-type]
                {"step": step, "audit_parse_failure_rate": rate, "threshold": c.parse_failure_rate},
            ))  # fmt: skip
        fired = [a for a in out if a is not None]
        self.fired += fired
        return fired


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
