"""Checkpoint ranking shared by trainers and app."""

from __future__ import annotations

import math

from synaptic_tui.scoring import best_step, checkpoint_score, metrics_at


def test_kto_score_is_margin_over_kl_and_guards_kl():
    assert checkpoint_score("kto", {"rewards/margins": 0.6, "kl": 0.3}) == 0.6 / 0.3
    assert checkpoint_score("kto", {"rewards/margins": 0.6, "kl": 0.0}) is None
    assert checkpoint_score("kto", {"rewards/margins": 0.6, "kl": -1}) is None
    assert checkpoint_score("kto", {"rewards/margins": math.nan, "kl": 0.3}) is None


def test_sft_prefers_eval_loss_over_train_loss():
    assert checkpoint_score("sft", {"loss": 1.0, "eval_loss": 2.0}) == -2.0
    assert checkpoint_score("sft", {"loss": 1.0}) == -1.0
    assert checkpoint_score("sft", {"learning_rate": 1e-4}) is None


def test_metrics_at_merges_keys_seen_at_or_before_the_step():
    rows = [{"step": 1, "loss": 3.0, "rewards/chosen": 0.1}, {"step": 2, "loss": 2.0},
            {"step": 3, "loss": 1.0, "rewards/rejected": -0.2}]
    assert metrics_at(2, rows) == {"step": 2, "loss": 2.0, "rewards/chosen": 0.1}
    assert metrics_at(10, rows)["rewards/rejected"] == -0.2
    assert metrics_at(0, rows) == {}


def test_best_step_sft_lowest_loss_and_later_wins_ties():
    assert best_step("sft", {10: {"loss": 2.0}, 20: {"loss": 1.0}, 30: {"loss": 1.5}}) == 20
    assert best_step("sft", {10: {"loss": 1.0}, 20: {"loss": 1.0}}) == 20
    assert best_step("sft", {}) is None


def test_best_step_kto_uses_ratio_then_margin_when_kl_is_zero():
    assert best_step("kto", {1: {"rewards/margins": 0.2, "kl": 0.1}, 2: {"rewards/margins": 0.3, "kl": 0.3}}) == 1
    assert best_step("kto", {1: {"rewards/margins": 0.2, "kl": 0.0}, 2: {"rewards/margins": 0.1, "kl": 0.0}}) == 1
