"""report.md for one eval and the text of a comparison between two."""

from __future__ import annotations

from typing import Any


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def rates_line(summary: dict[str, Any]) -> str:
    """Overall, tool-call and behaviour pass rates in one line, with what was not scored."""
    tools, behaviour = summary.get("tool_calls") or {}, summary.get("behavior") or {}
    line = (f"overall {_pct(summary.get('pass_rate'))}; tool calls {_pct(tools.get('pass_rate'))} "
            f"({tools.get('passed', 0)}/{tools.get('passed', 0) + tools.get('failed', 0)}); "
            f"behaviour {_pct(behaviour.get('pass_rate'))} "
            f"({behaviour.get('passed', 0)}/{behaviour.get('passed', 0) + behaviour.get('failed', 0)})")
    unscored = (behaviour.get("checks") or {}).get("not_scored", 0)
    if unscored:
        why = ", ".join(f"{n} {reason}" for reason, n in (behaviour.get("not_scored_why") or {}).items())
        line += f"; {unscored} behaviour check{'s' if unscored != 1 else ''} not scored ({why})"
    return line


def _verdict_label(check: dict[str, Any]) -> str:
    by = f" ({check['by']})" if check.get("by") else ""
    return f"{check.get('verdict', '')}{by}"


def render_report(summary: dict[str, Any], results: list[dict[str, Any]]) -> str:
    tools, behaviour = summary.get("tool_calls") or {}, summary.get("behavior") or {}
    checks = behaviour.get("checks") or {}
    judge = summary.get("judge") or {}
    lines = [
        f"# Eval {summary.get('eval_id', '')}",
        "",
        f"- Model: `{summary.get('model')}` via {summary.get('backend')} at {summary.get('url')}",
        f"- Prompt set: `{summary.get('prompt_set')}`",
        f"- Started {summary.get('started_at') or '-'}, ended {summary.get('ended_at') or '-'}",
        f"- Cases: {summary['total']} of {summary.get('planned', summary['total'])} run; "
        f"{summary['passed']} passed, {summary['failed']} failed, {summary['errors']} errors, "
        f"{summary.get('not_scored', 0)} not scored",
        f"- **Pass rate: {_pct(summary['pass_rate'])}** overall; tool calls {_pct(tools.get('pass_rate'))} "
        f"({tools.get('passed', 0)} of {tools.get('passed', 0) + tools.get('failed', 0)} cases); "
        f"behaviour {_pct(behaviour.get('pass_rate'))} "
        f"({behaviour.get('passed', 0)} of {behaviour.get('passed', 0) + behaviour.get('failed', 0)} cases)",
        f"- Behaviour checks: {checks.get('total', 0)}; {checks.get('pass', 0)} passed, {checks.get('fail', 0)} "
        f"failed, {checks.get('not_scored', 0)} not scored"
        + ("" if not behaviour.get("not_scored_why") else " (" + ", ".join(
            f"{n}: {why}" for why, n in behaviour["not_scored_why"].items()) + ")"),
        f"- Latency: mean {_seconds(summary['latency_s']['mean'])}, p50 {_seconds(summary['latency_s']['p50'])}, "
        f"p95 {_seconds(summary['latency_s']['p95'])}; tokens: {summary['tokens']['prompt']} prompt, "
        f"{summary['tokens']['completion']} completion",
        "",
    ]
    if judge.get("model"):
        lines.append(f"- Judge: `{judge['model']}`; {judge.get('decided', 0)} verdicts from the judge, "
                     f"{judge.get('judged', 0)} checks judged ({judge.get('cached', 0)} from the cache), "
                     f"{judge.get('failed', 0)} unanswered; agreement with the rules where both ran: "
                     f"{_pct(judge.get('agreement'))} ({judge.get('agreed', 0)} of {judge.get('compared', 0)})")
    else:
        lines.append("- Judge: none (checks that need reading are not scored; give --judge-url and --judge-model)")
    repeats = summary.get("repeats")
    if repeats:
        rate = repeats["pass_rate"]
        lines.append(f"- Repeats: {repeats['tries']} tries of {repeats['cases']} cases; pass rate mean "
                     f"{_pct(rate['mean'])}, spread {_pct(rate['min'])} to {_pct(rate['max'])} "
                     f"(stdev {_pct(rate['stdev'])}); pass^{repeats['tries']} (every try passed) "
                     f"{_pct(repeats['pass_all'])}")
    lines += [
        "",
        "## By tag",
        "",
        "| Tag | Cases | Passed | Errors | Not scored | Pass rate | Tool calls | Behaviour |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tag, row in summary["per_tag"].items():
        lines.append(f"| {_cell(tag)} | {row['total']} | {row['passed']} | {row['errors']} "
                     f"| {row.get('not_scored', 0)} | {_pct(row['pass_rate'])} "
                     f"| {_pct(row.get('tool_pass_rate'))} | {_pct(row.get('behavior_pass_rate'))} |")
    lines += ["", "## By tool", "", "| Tool | Cases expecting it | Called | Passed | Unexpected calls | Pass rate |",
              "|---|---:|---:|---:|---:|---:|"]
    for tool, row in summary["per_tool"].items():
        lines.append(f"| {_cell(tool)} | {row['cases']} | {row['called']} | {row['passed']} | {row['unexpected']} "
                     f"| {_pct(row['pass_rate'])} |")
    per_check = summary.get("per_expectation") or {}
    if per_check:
        lines += ["", "## By expectation", "",
                  "| Check | Kind | Cases | Passed | Failed | Not scored | By judge | Pass rate |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, row in per_check.items():
            lines.append(f"| {_cell(name)} | {row['kind'].replace('_', ' ')} | {row['total']} | {row['pass']} "
                         f"| {row['fail']} | {row['not_scored']} | {row['by_judge']} | {_pct(row['pass_rate'])} |")
    reasons = summary.get("failure_reasons") or []
    lines += ["", "## Most frequent failure reasons", ""]
    if not reasons:
        lines.append("None.")
    for entry in reasons:
        lines.append(f"- {entry['count']}x {_cell(entry['reason'])} (e.g. {_cell(', '.join(entry['cases']))}: "
                     f"{_cell(entry['example'])})")
    failures = [r for r in results if r.get("verdict", "pass" if r.get("passed") else "fail") == "fail"
                and not r.get("error")]
    errors = [r for r in results if r.get("error")]
    lines += ["", f"## Failures ({len(failures)})", ""]
    if not failures:
        lines.append("None.")
    for r in failures:
        called = ", ".join(c["name"] for c in r.get("calls") or []) or "nothing"
        attempt = f" try {r['try']}" if (r.get("try") or 1) > 1 else ""
        expected = ", ".join(r.get("expected_tools") or []) or "no tool"
        lines.append(f"- **{_cell(r['id'])}**{attempt} (expected {expected}; "
                     f"called {_cell(called)}" + (f"; reply {r['response_type']}" if r.get("response_type") else "")
                     + ")")
        for check in r.get("checks") or []:
            if not check.get("passed"):
                lines.append(f"  - {_cell(check['name'])}: {_cell(check.get('detail', ''))}")
        for check in r.get("behavior") or []:
            if check.get("verdict") == "fail":
                lines.append(f"  - {_cell(check['name'])} [{_verdict_label(check)}]: {_cell(check.get('reason', ''))}")
        if r.get("notes"):
            lines.append(f"  - notes: {_cell(r['notes'])}")
    unscored = [(r, c) for r in results for c in r.get("behavior") or [] if c.get("verdict") == "not scored"]
    lines += ["", f"## Not scored ({len(unscored)} checks)", ""]
    if not unscored:
        lines.append("None.")
    for r, check in unscored:
        lines.append(f"- **{_cell(r['id'])}** {_cell(check['name'])}: {_cell(check.get('reason', ''))}")
    lines += ["", f"## Errors ({len(errors)})", ""]
    if not errors:
        lines.append("None.")
    for r in errors:
        lines.append(f"- **{_cell(r['id'])}** [{r['error'].get('kind')}]: {_cell(r['error'].get('message'))}")
    return "\n".join(lines) + "\n"


def render_comparison(comparison: dict[str, Any]) -> str:
    overall = comparison["overall"]
    delta = overall["delta"]
    def change(part: dict[str, Any]) -> str:
        return (f"{_pct(part['a'])} -> {_pct(part['b'])}"
                + ("" if part["delta"] is None else f" ({part['delta'] * 100:+.1f} points)"))

    lines = [
        f"A: {comparison['a']}",
        f"B: {comparison['b']}",
        f"pass rate {_pct(overall['a'])} -> {_pct(overall['b'])}"
        + ("" if delta is None else f" ({delta * 100:+.1f} points)"),
    ]
    if "tool_calls" in comparison:
        lines += [f"tool calls {change(comparison['tool_calls'])}", f"behaviour {change(comparison['behavior'])}"]
    lines += [
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
    lines += [f"behaviour checks fixed: {len(comparison.get('behavior_fixed', []))}"]
    lines += [f"  {e['id']} {e['check']}" for e in comparison.get("behavior_fixed", [])]
    lines += [f"behaviour checks broken: {len(comparison.get('behavior_broken', []))}"]
    lines += [f"  {e['id']} {e['check']}: {e['reason_after']}" for e in comparison.get("behavior_broken", [])]
    if comparison["only_in_a"] or comparison["only_in_b"]:
        lines.append(f"only in A: {len(comparison['only_in_a'])}, only in B: {len(comparison['only_in_b'])}")
    return "\n".join(lines)
