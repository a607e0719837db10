"""report.md for one eval and the text of a comparison between two."""

from __future__ import annotations

from typing import Any


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def render_report(summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        f"# Eval {summary.get('eval_id', '')}",
        "",
        f"- Model: `{summary.get('model')}` via {summary.get('backend')} at {summary.get('url')}",
        f"- Prompt set: `{summary.get('prompt_set')}`",
        f"- Started {summary.get('started_at') or '-'}, ended {summary.get('ended_at') or '-'}",
        f"- Cases: {summary['total']} of {summary.get('planned', summary['total'])} run; "
        f"{summary['passed']} passed, {summary['failed']} failed, {summary['errors']} errors",
        f"- **Pass rate: {_pct(summary['pass_rate'])}**",
        f"- Latency: mean {_seconds(summary['latency_s']['mean'])}, p50 {_seconds(summary['latency_s']['p50'])}, "
        f"p95 {_seconds(summary['latency_s']['p95'])}; tokens: {summary['tokens']['prompt']} prompt, "
        f"{summary['tokens']['completion']} completion",
        "",
        "## By tag",
        "",
        "| Tag | Cases | Passed | Errors | Pass rate |",
        "|---|---:|---:|---:|---:|",
    ]
    for tag, row in summary["per_tag"].items():
        lines.append(f"| {_cell(tag)} | {row['total']} | {row['passed']} | {row['errors']} | {_pct(row['pass_rate'])} |")
    lines += ["", "## By tool", "", "| Tool | Cases expecting it | Called | Passed | Unexpected calls | Pass rate |",
              "|---|---:|---:|---:|---:|---:|"]
    for tool, row in summary["per_tool"].items():
        lines.append(f"| {_cell(tool)} | {row['cases']} | {row['called']} | {row['passed']} | {row['unexpected']} "
                     f"| {_pct(row['pass_rate'])} |")
    failures = [r for r in results if not r.get("passed") and not r.get("error")]
    errors = [r for r in results if r.get("error")]
    lines += ["", f"## Failures ({len(failures)})", ""]
    if not failures:
        lines.append("None.")
    for r in failures:
        called = ", ".join(c["name"] for c in r.get("calls") or []) or "nothing"
        lines.append(f"- **{_cell(r['id'])}** (expected {', '.join(r.get('expected_tools') or []) or 'no tool'}; "
                     f"called {_cell(called)})")
        for reason in r.get("reasons") or []:
            lines.append(f"  - {_cell(reason)}")
    lines += ["", f"## Errors ({len(errors)})", ""]
    if not errors:
        lines.append("None.")
    for r in errors:
        lines.append(f"- **{_cell(r['id'])}** [{r['error'].get('kind')}]: {_cell(r['error'].get('message'))}")
    return "\n".join(lines) + "\n"


def render_comparison(comparison: dict[str, Any]) -> str:
    overall = comparison["overall"]
    delta = overall["delta"]
    lines = [
        f"A: {comparison['a']}",
        f"B: {comparison['b']}",
        f"pass rate {_pct(overall['a'])} -> {_pct(overall['b'])}"
        + ("" if delta is None else f" ({delta * 100:+.1f} points)"),
        "",
        f"{'tag':<24} {'A':>7} {'B':>7} {'delta':>8}",
    ]
    for tag, row in comparison["per_tag"].items():
        change = "" if row["delta"] is None else f"{row['delta'] * 100:+.1f}"
        lines.append(f"{tag:<24} {_pct(row['a']):>7} {_pct(row['b']):>7} {change:>8}")
    lines += ["", f"fixed (fail -> pass): {len(comparison['fixed'])}"]
    lines += [f"  {e['id']}" for e in comparison["fixed"]]
    lines += [f"broken (pass -> fail): {len(comparison['broken'])}"]
    for e in comparison["broken"]:
        lines.append(f"  {e['id']}: {'; '.join(e['reasons_after']) or 'failed'}")
    if comparison["only_in_a"] or comparison["only_in_b"]:
        lines.append(f"only in A: {len(comparison['only_in_a'])}, only in B: {len(comparison['only_in_b'])}")
    return "\n".join(lines)
