"""Comparing runs: configs side by side with differences marked, curves overlaid and followed live."""

from __future__ import annotations

import json

from conftest import write_run
from textual.widgets import DataTable, Static

from synaptic_tui.app import SynapticApp
from synaptic_tui.compare import MISSING, config_rows, flatten
from synaptic_tui.screens.compare import CompareScreen
from synaptic_tui.screens.runs import RunsScreen
from synaptic_tui.services import Services
from synaptic_tui.widgets.runs_table import RunsTable


def test_flatten_keeps_sections_and_lists_on_one_line():
    flat = flatten({"training": {"learning_rate": 0.0002, "max_steps": 30}, "lora": {"target_modules": ["q_proj", "v_proj"]},
                    "eval": {"prompt_set": None}, "method": "sft"})
    assert flat == {"training.learning_rate": "0.0002", "training.max_steps": "30",
                    "lora.target_modules": "q_proj, v_proj", "eval.prompt_set": MISSING, "method": "sft"}


def test_config_rows_mark_what_differs_and_what_one_run_lacks():
    rows = {r.key: r for r in config_rows([
        {"method": "sft", "training": {"learning_rate": 2e-4, "max_steps": 30}},
        {"method": "sft", "training": {"learning_rate": 5e-5, "max_steps": 30}, "lora": {"r": 16}},
    ])}
    assert list(rows) == ["method", "training.learning_rate", "training.max_steps", "lora.r"]
    assert not rows["method"].differs and not rows["training.max_steps"].differs
    assert rows["training.learning_rate"].differs and rows["training.learning_rate"].values == ["0.0002", "5e-05"]
    assert rows["lora.r"].values == [MISSING, "16"] and rows["lora.r"].differs


def two_runs(runs_dir):
    base = {"training": {"learning_rate": 2e-4, "max_steps": 10, "save_steps": 5}, "lora": {"r": 16}}
    fast = write_run(runs_dir, "20261122-100000-sft-fast", config=base,
                     status={"state": "succeeded", "step": 10, "max_steps": 10, "best_checkpoint": "checkpoint-10"},
                     checkpoints=(5, 10),
                     metrics=[{"step": s, "loss": 2.0 - 0.1 * s} for s in range(1, 11)])
    slow = write_run(runs_dir, "20261122-110000-sft-slow",
                     config={**base, "training": {**base["training"], "learning_rate": 5e-5}},
                     status={"state": "running", "step": 3, "max_steps": 10},
                     metrics=[{"step": s, "loss": 2.0 - 0.02 * s} for s in range(1, 4)])
    return fast, slow


def make_app(runs_dir):
    return SynapticApp(Services(runs_dir=runs_dir, refresh_seconds=0.2))


async def wait_for(pilot, predicate, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("the screen did not catch up")


async def test_mark_two_runs_and_compare_them(runs_dir):
    fast, slow = two_runs(runs_dir)
    app = make_app(runs_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("r")
        assert isinstance(app.screen, RunsScreen)
        table = app.screen.query_one(RunsTable)
        await pilot.press("v")  # nothing marked yet: says how, stays here
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("space", "space")  # newest first: slow, then fast
        assert table.marked == [slow.name, fast.name]
        assert table.get_cell(slow.name, "run") == f"✓ {slow.name}"
        await pilot.press("v")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        config = screen.query_one("#compare-config", DataTable)
        assert [c.label.plain for c in config.columns.values()] == ["", slow.name, fast.name]
        lr = [str(cell) for cell in config.get_row("training.learning_rate")]
        assert lr == ["≠ training.learning_rate", "5e-05", "0.0002"]
        assert str(config.get_row("lora.r")[0]) == "  lora.r"
        assert [str(c) for c in config.get_row("summary:state")][1:] == ["running", "succeeded"]
        assert [str(c) for c in config.get_row("summary:best checkpoint")][1:] == ["", "checkpoint-10"]
        title = str(screen.query_one("#compare-title", Static).render())
        assert "1 of" in title and "config keys differ" in title

        plotted = screen.plotted()
        assert plotted[fast.name] == (list(range(1, 11)), [2.0 - 0.1 * s for s in range(1, 11)])
        assert plotted[slow.name][0] == [1, 2, 3]

        # The slow run goes on: its curve follows.
        with open(slow / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": 4, "loss": 1.9, "eval_loss": 1.95}) + "\n")
        await wait_for(pilot, lambda: screen.plotted()[slow.name][0] == [1, 2, 3, 4])

        await pilot.press("d")
        keys = [str(row.key.value) for row in config.rows.values()]
        assert [k for k in keys if not k.startswith("summary:")] == ["training.learning_rate"]
        await pilot.press("d")
        assert "lora.r" in {str(row.key.value) for row in config.rows.values()}

        await pilot.press("k")  # eval loss: only the slow run has any
        assert screen.curve == "eval_loss"
        assert screen.plotted() == {slow.name: ([4], [1.95])}

        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_unmarking_takes_a_run_out_of_the_comparison(runs_dir):
    fast, slow = two_runs(runs_dir)
    write_run(runs_dir, "20261122-120000-kto-third", metrics=[{"step": 1, "loss": 0.5, "kl": 0.1, "rewards/margins": 0.2}])
    app = make_app(runs_dir)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("r", "space", "space", "space", "space")  # the last one unmarks the oldest
        table = app.screen.query_one(RunsTable)
        assert table.marked == ["20261122-120000-kto-third", slow.name]
        await pilot.press("v")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        assert [r.run_id for r in screen.runs] == ["20261122-120000-kto-third", slow.name]
        # An SFT and a KTO run: loss is shared, KL and margin come from the KTO run.
        assert screen.curves == ["loss", "kl", "rewards/margins", "eval_loss"]
        assert str(screen.query_one("#compare-config", DataTable).get_row("method")[0]) == "≠ method"
