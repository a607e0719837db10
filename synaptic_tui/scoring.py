"""How checkpoints are ranked: one rule shared by the trainers (which keep the best) and the app (which marks it).

KTO: score = rewards/margins / kl, only where kl > 0; higher is better.
SFT: eval_loss where logged, else train loss; lower is better.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def kto_score(metrics: Mapping[str, Any]) -> float | None:
    margin = _number(metrics.get("rewards/margins", metrics.get("eval_rewards/margins")))
    kl = _number(metrics.get("kl", metrics.get("eval_kl")))
    if margin is None or kl is None or kl <= 0:
        return None
    return margin / kl


def checkpoint_score(method: str, metrics: Mapping[str, Any]) -> float | None:
    """A number where bigger is better, or None when the metrics cannot rank this checkpoint."""
    if method == "kto":
        return kto_score(metrics)
    loss = _number(metrics.get("eval_loss"))
    if loss is None:
        loss = _number(metrics.get("loss"))
    return None if loss is None else -loss


def ranking_metric(method: str, metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The metric that ranked a checkpoint, as a user reads it: ("margin/KL", 1.2), ("eval_loss", 0.41), ..."""
    if method == "kto":
        score = kto_score(metrics)
        if score is not None:
            return "margin/KL", score
        margin = kto_margin(metrics)
        return None if margin is None else ("margin", margin)
    for key in ("eval_loss", "loss"):
        value = _number(metrics.get(key))
        if value is not None:
            return key, value
    return None


def metrics_at(step: int, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Every metric logged at or nearest before `step`, newest value per key.

    KTO logs `*/chosen` and `*/rejected` only on lines whose window held that
    label, so keys are merged across lines rather than taken from one line.
    """
    merged: dict[str, Any] = {}
    for row in sorted((r for r in rows if isinstance(r.get("step"), int) and r["step"] <= step), key=lambda r: r["step"]):
        merged.update(row)
    return merged


def kto_margin(metrics: Mapping[str, Any]) -> float | None:
    return _number(metrics.get("rewards/margins", metrics.get("eval_rewards/margins")))


def best_step(method: str, scored: Mapping[int, Mapping[str, Any]]) -> int | None:
    """The step whose metrics score best; ties go to the later checkpoint.

    KTO's KL estimate is clamped at 0 and stays there early in a run; when no
    checkpoint has KL > 0, the margin alone ranks them.
    """
    rules = [lambda m: checkpoint_score(method, m)]
    if method == "kto":
        rules.append(kto_margin)
    for rule in rules:
        ranked = [(score, step) for step, metrics in scored.items() if (score := rule(metrics)) is not None]
        if ranked:
            return max(ranked)[1]
    return None
