"""Mutation check: break one rule of the product at a time and show that a test fails for each.

    python tests/mutations.py [--only NAME ...] [--list] [--no-baseline]

Each mutation replaces one piece of source text in a temporary copy of the
tree (tracked and untracked, non-ignored files) and runs, in that copy, the
tests that should catch it; PYTHONPATH points at the copy, so the trainers and
exporters those tests launch run the mutated code too. A mutation is killed
when at least one of its tests fails, survived when they all pass. The same
tests run first on the unmutated copy, which must pass (else "killed" would
mean nothing). Exit code 1 when any mutation survived or no longer applies.

Adding a mutation is one entry in MUTATIONS. Not collected by pytest (the
name does not start with test_).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids, run in the mutated copy
    why: str = ""


MUTATIONS: list[Mutation] = [
    Mutation(
        "verdict: every case passes", "evaluator/runner.py",
        "passed=score.passed, reasons=score.reasons", "passed=True, reasons=score.reasons",
        ("tests/test_evaluator.py::test_run_eval_writes_results_as_cases_finish_then_resumes_only_missing",
         "tests/test_evaluator_servers.py::test_native_ollama_tool_calls_are_scored",
         "tests/test_evaluator_servers.py::test_each_fault_is_recorded_and_the_eval_completes",
         "tests/test_evaluate_screen.py::test_run_an_eval_from_the_screen_and_watch_it_fill"),
        "the compare tests are left out on purpose: other tests must catch it"),
    Mutation(
        "ranking: SFT prefers the higher loss", "synaptic_tui/scoring.py",
        "return None if loss is None else -loss", "return None if loss is None else loss",
        ("tests/test_scoring.py", "tests/test_training.py::test_the_best_checkpoint_survives_rotation")),
    Mutation(
        "ranking: the worst checkpoint is best", "synaptic_tui/scoring.py",
        "            return max(ranked)[1]", "            return min(ranked)[1]",
        ("tests/test_scoring.py", "tests/test_run_view.py")),
    Mutation(
        "cancel: the trainer ignores SIGTERM", "trainers/common.py",
        "        self.requested = True\n        self.signal_name = signal.Signals(signum).name\n",
        "        return\n",
        ("tests/test_training.py::test_cancel_then_resume_continues_the_step_count",
         "tests/test_training.py::test_train_wait_exits_3_when_the_run_is_cancelled")),
    Mutation(
        "cancel: no checkpoint is saved", "trainers/common.py",
        "                control.should_save = True\n", "                control.should_save = False\n",
        ("tests/test_training.py::test_cancel_then_resume_continues_the_step_count",)),
    Mutation(
        "cancel: MLX stops without saving", "trainers/mlx_lora.py",
        "if step % save_steps == 0 or stopping:", "if step % save_steps == 0:",
        ("tests/test_mlx.py::test_mlx_run_trains_live_cancels_resumes_and_fuses",)),
    Mutation(
        "resume: MLX starts its data over", "trainers/mlx_lora.py",
        "skip = self.start_step * self.accumulation", "skip = 0",
        ("tests/test_mlx.py::test_mlx_resume_continues_the_data_order",)),
    Mutation(
        "export: an all-zero adapter is merged", "trainers/export.py",
        "    delta = adapter_delta(model)\n    if delta == 0.0:", "    delta = adapter_delta(model)\n    if False:",
        ("tests/test_export.py::test_a_failed_verification_leaves_nothing_half_written",)),
    Mutation(
        "export: a stopped export leaves its staging", "trainers/export.py",
        "        if staging is not None:\n            shutil.rmtree(staging, ignore_errors=True)",
        "        if staging is not None:\n            pass",
        ("tests/test_export.py::test_a_stopped_export_leaves_nothing_half_written",)),
    Mutation(
        "mask: the template's markers are ignored (every token trained)", "trainers/chat_templates.py",
        '        mask = list(encoded["assistant_masks"])\n', '        mask = [1] * len(encoded["input_ids"])\n',
        ("tests/test_chat_templates.py::test_every_builtin_renders_the_whole_tool_conversation_and_trains_only_the_assistant",
         "tests/test_mlx.py::test_mlx_loss_mask_covers_only_the_assistant_turns")),
    Mutation(
        "mask: a derived turn starts at the conversation's start", "trainers/chat_templates.py",
        "        spans.append((len(before), end))", "        spans.append((0, end))",
        ("tests/test_chat_templates.py::test_the_mask_is_derived_from_a_template_without_markers",)),
    Mutation(
        "template: auto keeps a template that drops tool calls", "trainers/chat_templates.py",
        "    if own and (complete or not needs_tools):", "    if own:",
        ("tests/test_chat_templates.py::test_auto_picks_a_tool_capable_template_for_a_model_whose_own_drops_tool_calls",)),
    Mutation(
        "probe: a row that lost its tool calls passes", "trainers/chat_templates.py",
        "    return calls + results + definitions", "    return []",
        ("tests/test_chat_templates.py::test_rows_that_would_lose_their_tool_calls_are_named_by_line",
         "tests/test_chat_templates.py::test_kto_completions_that_render_alike_are_caught")),
    Mutation(
        "health: a vanished gradient never ends the run", "trainers/common.py",
        "            if len(self.zero_grad_steps) >= self.patience:", "            if False:",
        ("tests/test_training.py::test_health_rules",
         "tests/test_training.py::test_a_run_that_stops_learning_ends_failed_with_the_reason")),
]


def tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return [name for name in out.stdout.split("\0") if name and (REPO / name).is_file()]


def copy_tree(target: Path) -> Path:
    for name in tree_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination)
    return target


def apply(mutation: Mutation, tree: Path) -> None:
    path = tree / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise LookupError(f"{mutation.path}: the text to mutate occurs {count} times (needs exactly 1); "
                          f"update the entry {mutation.name!r}")
    path.write_text(text.replace(mutation.old, mutation.new))


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, list[str], float]:
    """(pytest's exit code, the failing test ids, seconds) for `tests` run in `tree`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *tests],
                         cwd=tree, env=env, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out.stdout, re.M)
    if out.returncode not in (0, 1):  # collection errors, usage errors, no tests: say why
        failed = failed or [f"pytest exit code {out.returncode}: {(out.stdout + out.stderr).strip()[-400:]}"]
    return out.returncode, failed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run the mutations whose name contains NAME (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated tree")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(part in m.name for part in args.only)]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.name:<46} {m.path}")
        return 0 if chosen else 2
    with tempfile.TemporaryDirectory(prefix="synaptic-mutations-") as tmp:
        base = copy_tree(Path(tmp) / "base")
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, failed, seconds = run_tests(base, tests)
            print(f"baseline (unmutated): {'pass' if code == 0 else 'FAIL'} in {seconds:.0f} s", flush=True)
            if code != 0:
                print("  the tests fail without a mutation; fix them first:\n  " + "\n  ".join(failed))
                return 1
        results = []
        for mutation in chosen:
            tree = Path(tmp) / "mutant"
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(base, tree, symlinks=True)
            try:
                apply(mutation, tree)
            except LookupError as exc:
                results.append((mutation, "stale", [str(exc)], 0.0))
                print(f"STALE     {mutation.name}: {exc}", flush=True)
                continue
            code, failed, seconds = run_tests(tree, mutation.tests)
            verdict = "killed" if code != 0 else "survived"
            results.append((mutation, verdict, failed, seconds))
            print(f"{verdict.upper():<9} {mutation.name} ({seconds:.0f} s)", flush=True)
    print()
    print(f"{'mutation':<46} {'file':<24} {'result':<9} caught by")
    for mutation, verdict, failed, _ in results:
        caught = ", ".join(f.split("::")[-1] for f in failed) if verdict == "killed" else "-"
        print(f"{mutation.name:<46} {mutation.path:<24} {verdict:<9} {caught}")
    killed = sum(1 for _, verdict, _, _ in results if verdict == "killed")
    print(f"\n{killed}/{len(results)} mutations killed")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
