"""How checkpoints are ranked: one rule shared by the trainers (which keep the best) and the app (which marks it).

KTO: score = rewards/margins / kl, only where kl > 0; higher is better.
SFT: eval_loss where logged, else train loss; lower is better. Checkpoints are compared on the same
metric: when some have an eval loss, only those are ranked (a train loss is not an eval loss).
A checkpoint whose loss or grad norm is not a finite number (the run diverged) is never ranked.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence


HEALTH_KEYS = ("loss", "grad_norm", "eval_loss")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def diverged(metrics: Mapping[str, Any]) -> bool:
    """Whether a loss or grad norm among the metrics is NaN or infinite."""
    return any(isinstance(metrics.get(key), float) and not math.isfinite(metrics[key]) for key in HEALTH_KEYS)


def kto_score(metrics: Mapping[str, Any]) -> float | None:
    margin = _number(metrics.get("rewards/margins", metrics.get("eval_rewards/margins")))
    kl = _number(metrics.get("kl", metrics.get("eval_kl")))
    if margin is None or kl is None or kl <= 0:
        return None
    return margin / kl


def checkpoint_score(method: str, metrics: Mapping[str, Any]) -> float | None:
    """A number where bigger is better, or None when the metrics cannot rank this checkpoint."""
    if diverged(metrics):
        return None
    if method == "kto":
        return kto_score(metrics)
    loss = _number(metrics.get("eval_loss"))
    if loss is None:
        loss = _number(metrics.get("loss"))
    return None if loss is None else -loss


def ranking_metric(method: str, metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The metric that ranked a checkpoint, as a user reads it: ("margin/KL", 1.2), ("eval_loss", 0.41), ..."""
    if diverged(metrics):
        return None
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
    """Every metric logged at or nearest before `step`, newest value per key; eval metrics only from `step`
    itself (an eval loss measured at an earlier step says nothing about this checkpoint's weights).

    KTO logs `*/chosen` and `*/rejected` only on lines whose window held that
    label, so keys are merged across lines rather than taken from one line.
    """
    merged: dict[str, Any] = {}
    for row in sorted((r for r in rows if isinstance(r.get("step"), int) and not isinstance(r["step"], bool)
                       and 0 <= r["step"] <= step), key=lambda r: r["step"]):
        merged.update(row if row["step"] == step else {k: v for k, v in row.items() if not k.startswith("eval_")})
    return merged


def kto_margin(metrics: Mapping[str, Any]) -> float | None:
    return _number(metrics.get("rewards/margins", metrics.get("eval_rewards/margins")))


def best_of(method: str, candidates: Sequence[tuple[Any, Mapping[str, Any]]]) -> Any | None:
    """The key of the candidate whose metrics rank best; ties go to the later candidate in the sequence.

    KTO's KL estimate is clamped at 0 and stays there early in a run; when no
    checkpoint has KL > 0, the margin alone ranks them. SFT compares eval losses
    where any candidate has one, else train losses.
    """
    healthy = [(key, metrics) for key, metrics in candidates if not diverged(metrics)]
    if method == "kto":
        rules = [kto_score, kto_margin]
    else:
        rules = [lambda m: -v if (v := _number(m.get("eval_loss"))) is not None else None,
                 lambda m: -v if (v := _number(m.get("loss"))) is not None else None]
    for rule in rules:
        ranked = [(score, index) for index, (_, metrics) in enumerate(healthy) if (score := rule(metrics)) is not None]
        if ranked:
            return healthy[max(ranked)[1]][0]
    return None


def best_step(method: str, scored: Mapping[int, Mapping[str, Any]]) -> int | None:
    """The step whose metrics score best (best_of over steps in order); ties go to the later checkpoint."""
    return best_of(method, sorted(scored.items(), key=lambda item: item[0]))
