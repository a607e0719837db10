"""Behaviour scoring: each expectation and anti-pattern of a case as a named check with a verdict.

A rule decides a check where the rule is mechanical (a tool called or not, the first
tool, the response type, a `limit`'s bounds, the length of context.sessionMemory, a
question asked). An LLM judge reading a rubric decides the ones that need reading;
where a rule settles one of those anyway (a reply with no text explains nothing) the
rule decides, and the judge's answer is kept so the report can say how often the two
agree. Without a judge those checks are `not scored`, as is every name no rule or
rubric knows: counted and reported, never passed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

from evaluator.scoring import FAIL, NOT_SCORED, PASS, Response

if TYPE_CHECKING:
    from evaluator.judge import Judge
    from evaluator.prompts import Case

# Lengths of the reply's text (characters), as the original scored them.
EXPLAINED = 30  # below this, the reply explains nothing
MINIMAL = 50  # below this, the explanation is minimal
EXCESSIVE = 100  # above this, a reply that should just act explains too much
APPROPRIATE_LIMIT = (10, 100)  # a search `limit` that fetches enough without flooding the context
ASKING = ("would you like", "do you want", "which ", "please confirm", "please specify", "please clarify",
          "let me know", "should i", "shall i", "can you tell me", "could you tell me")
WRITING = ("create", "write", "append", "prepend")  # tool names that make or change content

# Why a check has no verdict; the report counts each.
NEEDS_JUDGE, UNKNOWN, JUDGE_ERROR = "needs a judge", "no rule or rubric", "judge failed"

Settle = Callable[[Response, Any], "tuple[bool | None, str]"]


@dataclass(frozen=True)
class Behaviour:
    """One named behaviour: whether it shows in a reply, by rule, by judge, or by rule when the rule can tell."""

    kind: str  # expectation | anti_pattern
    describes: str  # the behaviour in words: the judge's rubric, and the report's gloss
    settle: Settle  # (present, what was seen); present None: only reading can tell
    judged: bool = False
    number: bool = False  # the expectation's value is a number (a minimum), not true/false


def _asks(text: str) -> bool:
    lowered = text.lower()
    return "?" in text or any(phrase in lowered for phrase in ASKING)


def _called(r: Response) -> str:
    return f"called {', '.join(r.names)}" if r.calls else "no tool call"


def _chars(r: Response) -> str:
    return f"{len(r.prose)} characters of text"


def _args(r: Response) -> list[dict[str, Any]]:
    return [c.arguments for c in r.calls if isinstance(c.arguments, dict)]


def _context_field(r: Response, key: str) -> list[str]:
    """context.<key> of every call ("" where a call has none)."""
    values = []
    for args in (c.arguments if isinstance(c.arguments, dict) else {} for c in r.calls):
        context = args.get("context") if isinstance(args.get("context"), dict) else {}
        value = context.get(key)
        values.append(value if isinstance(value, str) else "")
    return values


def _limits(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "limit"] + [
            x for k, v in value.items() if k not in ("limit", "context") for x in _limits(v)]
    if isinstance(value, list):
        return [x for v in value for x in _limits(v)]
    return []


def _delegates(name: str) -> bool:
    # The original's delegation tool: agentManager_executePrompt (and its batch form).
    return name.lower().endswith("executeprompt")


# --- mechanical rules: (present, what was seen) -------------------------------------------


def no_call(r: Response, _: Any) -> tuple[bool, str]:
    return not r.calls, _called(r)


def any_call(r: Response, _: Any) -> tuple[bool, str]:
    return bool(r.calls), _called(r)


def call_without_asking(r: Response, _: Any) -> tuple[bool, str]:
    asked = _asks(r.prose)
    return bool(r.calls) and not asked, _called(r) + ("; the text asks a question first" if asked else "")


def text_then_call(r: Response, _: Any) -> tuple[bool, str]:
    return bool(r.calls) and len(r.prose) >= EXPLAINED, f"{_chars(r)}, {_called(r)}"


def minimal_text(r: Response, _: Any) -> tuple[bool, str]:
    return len(r.prose) < MINIMAL, _chars(r)


def excessive_text(r: Response, _: Any) -> tuple[bool, str]:
    return len(r.prose) > EXCESSIVE, _chars(r)


def silent_call(r: Response, _: Any) -> tuple[bool, str]:
    return bool(r.calls) and len(r.prose) < MINIMAL, f"{_called(r)}, {_chars(r)}"


def unexplained_call(r: Response, _: Any) -> tuple[bool, str]:
    return bool(r.calls) and len(r.prose) < EXPLAINED, f"{_called(r)}, {_chars(r)}"


def asks_without_acting(r: Response, _: Any) -> tuple[bool, str]:
    asked = _asks(r.prose)
    return not r.calls and asked, ("asks a question" if asked else "asks nothing") + f", {_called(r)}"


def appropriate_limit(r: Response, _: Any) -> tuple[bool, str]:
    limits = [v for args in _args(r) for v in _limits(args)]
    if not limits:
        return False, "no call passed a limit"
    low, high = APPROPRIATE_LIMIT
    good = all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in limits)
    return good, f"limit {', '.join(map(str, limits))} (appropriate: {low} to {high})"


def excessive_limit(r: Response, _: Any) -> tuple[bool, str]:
    limits = [v for args in _args(r) for v in _limits(args)]
    high = APPROPRIATE_LIMIT[1]
    over = [v for v in limits if isinstance(v, (int, float)) and not isinstance(v, bool) and v > high]
    return bool(over), (f"limit {', '.join(map(str, limits))} (at most {high})" if limits else "no limit passed")


def first_call_delegates(r: Response, _: Any) -> tuple[bool, str]:
    return bool(r.calls) and _delegates(r.names[0]), (f"first call {r.names[0]}" if r.calls else "no tool call")


def some_call_delegates(r: Response, _: Any) -> tuple[bool, str]:
    return any(_delegates(n) for n in r.names), _called(r)


def no_delegation(r: Response, _: Any) -> tuple[bool, str]:
    return not any(_delegates(n) for n in r.names), _called(r)


def writes_without_delegating(r: Response, _: Any) -> tuple[bool, str]:
    writes = any(word in n.lower() for n in r.names for word in WRITING)
    return writes and not any(_delegates(n) for n in r.names), _called(r)


def writes_content(r: Response, _: Any) -> tuple[bool, str]:
    return any(word in n.lower() for n in r.names for word in WRITING), _called(r)


def named_call(fragment: str) -> Settle:
    def settle(r: Response, _: Any) -> tuple[bool, str]:
        return any(fragment in n.lower() for n in r.names), _called(r)
    return settle


def context_min_chars(key: str) -> Settle:
    def settle(r: Response, minimum: Any) -> tuple[bool, str]:
        lengths = [len(v) for v in _context_field(r, key)]
        if not lengths:
            return False, f"no tool call carried context.{key}"
        return min(lengths) >= minimum, f"context.{key} of {', '.join(map(str, lengths))} characters"
    return settle


# --- rules that settle a judged check only when the reply leaves no doubt ------------------


def needs_question(r: Response, _: Any) -> tuple[bool | None, str]:
    if not _asks(r.prose):
        return False, "the text asks nothing" if r.prose else "no text"
    return None, "the text asks a question"


def needs_text(r: Response, _: Any) -> tuple[bool | None, str]:
    if len(r.prose) < EXPLAINED:
        return False, f"only {_chars(r)}"
    return None, _chars(r)


def unexplained(r: Response, _: Any) -> tuple[bool | None, str]:
    """For anti-patterns of choosing without saying why: no text means no reason was given."""
    if len(r.prose) < EXPLAINED:
        return True, f"no explanation: {_chars(r)}"
    return None, _chars(r)


def undelegated(r: Response, _: Any) -> tuple[bool | None, str]:
    if any(_delegates(n) for n in r.names):
        return False, f"delegated ({_called(r)})"
    return None, f"did not delegate ({_called(r)})"


def needs_tool_context(r: Response, _: Any) -> tuple[bool | None, str]:
    if not any(_context_field(r, "toolContext")):
        return False, "no call carried a context.toolContext"
    return None, "context.toolContext given"


def _e(describes: str, settle: Settle, judged: bool = False, number: bool = False) -> Behaviour:
    return Behaviour("expectation", describes, settle, judged, number)


def _a(describes: str, settle: Settle, judged: bool = False) -> Behaviour:
    return Behaviour("anti_pattern", describes, settle, judged)


EXPECTATIONS: dict[str, Behaviour] = {
    "does_not_call_tool": _e("makes no tool call", no_call),
    "calls_tool_directly": _e("calls a tool right away, without asking first", call_without_asking),
    "then_calls_tool": _e("says what it will do, then calls a tool", text_then_call),
    "minimal_or_no_explanation": _e(f"keeps its text under {MINIMAL} characters", minimal_text),
    "continues_workflow_silently": _e(f"carries on with a tool call and under {MINIMAL} characters of text",
                                      silent_call),
    "uses_appropriate_limit": _e(f"passes a limit between {APPROPRIATE_LIMIT[0]} and {APPROPRIATE_LIMIT[1]}",
                                 appropriate_limit),
    "delegates_complex_task": _e("hands the task to another model first (executePrompt)", first_call_delegates),
    "uses_execute_prompt": _e("calls executePrompt", some_call_delegates),
    "creates_next_subfolder": _e("calls a folder-creating tool (createFolder)", named_call("createfolder")),
    "appends_content": _e("calls an appending tool (appendContent)", named_call("append")),
    "sessionMemory_min_chars": _e("every call's context.sessionMemory has at least this many characters",
                                  context_min_chars("sessionMemory"), number=True),
    "toolContext_min_chars": _e("every call's context.toolContext has at least this many characters",
                                context_min_chars("toolContext"), number=True),
    # Judged: only reading tells.
    "toolContext_explains_why": _e("the toolContext in the calls' context argument explains why this tool is the "
                                   "right step for the user's request, not only what the tool does",
                                   needs_tool_context, judged=True),
    "asks_for_user_input": _e("asks the user for the information or decision it needs before acting, instead of "
                              "guessing", needs_question, judged=True),
    "asks_user_preference": _e("asks the user which of the possible options they prefer", needs_question,
                               judged=True),
    "asks_for_direction": _e("asks the user how they want it to proceed", needs_question, judged=True),
    "asks_if_more_needed": _e("asks whether the user needs anything else", needs_question, judged=True),
    "offers_alternatives": _e("offers the user concrete alternatives to choose from", needs_text, judged=True),
    "suggests_alternatives": _e("suggests concrete other ways to get what the user wants", needs_text,
                                judged=True),
    "presents_results_clearly": _e("presents the results so the user can read them at a glance (named items, "
                                   "structure, no noise)", needs_text, judged=True),
    "acknowledges_no_results": _e("says plainly that nothing was found", needs_text, judged=True),
    "explains_error": _e("explains what went wrong in words the user understands", needs_text, judged=True),
    "confirms_completion": _e("confirms what was done", needs_text, judged=True),
    "explains_choice": _e("says which option it chose and why", needs_text, judged=True),
    "reasons_about_selection": _e("gives its reasons for selecting the item it acts on", needs_text, judged=True),
    "explains_folder_priority": _e("explains why it looks in one folder before others", needs_text, judged=True),
    "reasons_about_active_vs_archived": _e("weighs active against archived items and says which it uses and why",
                                           needs_text, judged=True),
    "explains_name_based_choice": _e("explains that it picked the item by its name, and why the name fits",
                                     needs_text, judged=True),
    "reasons_about_naming": _e("explains why it chose the name it gives", needs_text, judged=True),
}

ANTI_PATTERNS: dict[str, Behaviour] = {
    "immediate_tool_call": _a("calls a tool at once instead of asking first", any_call),
    "assumes_user_choice": _a("acts on its own guess of what the user meant (calls a tool) instead of asking",
                              any_call),
    "retries_without_asking": _a("tries again with a tool call instead of asking the user", any_call),
    "auto_broadens_search": _a("widens the search on its own with another tool call", any_call),
    "auto_continues_cleanup": _a("carries on cleaning up with another tool call without being asked", any_call),
    "auto_creates_file": _a("creates or writes content the user did not ask for", writes_content),
    "auto_creates_content": _a("creates or writes content the user did not ask for", writes_content),
    "excessive_explanation": _a(f"writes more than {EXCESSIVE} characters where it should just act",
                                excessive_text),
    "asks_confirmation_for_obvious": _a("asks for confirmation instead of doing the obvious thing",
                                        asks_without_acting),
    "silent_choice": _a(f"picks and acts with under {EXPLAINED} characters of explanation", unexplained_call),
    "silent_folder_choice": _a(f"picks a folder and acts with under {EXPLAINED} characters of explanation",
                               unexplained_call),
    "excessive_limit": _a(f"passes a limit above {APPROPRIATE_LIMIT[1]}", excessive_limit),
    "creates_shallow_content_directly": _a("writes the content itself with a create/write tool instead of "
                                           "delegating", writes_without_delegating),
    "handles_complex_task_without_delegation": _a("handles a complex task without delegating it (executePrompt)",
                                                  no_delegation),
    "gives_legal_advice_without_delegation": _a("answers a legal question without delegating it (executePrompt)",
                                                no_delegation),
    # Judged: only reading tells.
    "no_reasoning_for_selection": _a("makes a selection without giving any reason for it", unexplained,
                                     judged=True),
    "arbitrary_selection": _a("picks one of several candidates without a stated criterion", unexplained,
                              judged=True),
    "no_naming_reasoning": _a("gives a name without saying why it fits", unexplained, judged=True),
    "superficial_marketing_plan": _a("writes a thin, generic marketing plan itself instead of delegating it",
                                     undelegated, judged=True),
    "superficial_comparison": _a("writes a shallow comparison itself instead of delegating it", undelegated,
                                 judged=True),
    "oversimplified_license_advice": _a("gives oversimplified licence advice itself instead of delegating it",
                                        undelegated, judged=True),
}


def understood(name: str) -> bool:
    return name in EXPECTATIONS or name in ANTI_PATTERNS


def value_problem(name: str, value: Any) -> str | None:
    """Why a known expectation cannot take this value (a number where true/false belongs, or the reverse)."""
    behaviour = EXPECTATIONS.get(name)
    if behaviour is None:
        return None
    if behaviour.number and (isinstance(value, bool) or value < 0):
        return f"must be a number of characters (at least 0), got {str(value).lower()}"
    if not behaviour.number and not isinstance(value, bool):
        return f"must be true or false, got {value}"
    return None


@dataclass
class BehaviourCheck:
    name: str
    kind: str  # response_type | expectation | anti_pattern
    expected: Any  # the expectation's value, the response type, or true for an anti-pattern to avoid
    verdict: str  # pass | fail | not scored
    reason: str
    by: str | None = None  # rule | judge; None when not scored
    rule: dict[str, Any] | None = None  # {"verdict", "reason"} when a rule could tell
    judge: dict[str, Any] | None = None  # {"verdict", "reason", "cached"} when asked; verdict None: no answer
    not_scored: str | None = None  # why not: needs a judge | no rule or rubric | judge failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _verdict(behaviour: Behaviour, present: bool, value: Any) -> str:
    if behaviour.kind == "anti_pattern" or value is False:
        return PASS if not present else FAIL
    return PASS if present else FAIL


async def score_behavior(case: Case, response: Response, judge: Judge | None = None) -> list[BehaviourCheck]:
    """Every behaviour check of a case, in the order the case lists them (response type first)."""
    checks: list[BehaviourCheck] = []
    if case.expected_response_type:
        ok = response.type == case.expected_response_type
        checks.append(BehaviourCheck("response_type", "response_type", case.expected_response_type,
                                     PASS if ok else FAIL, f"{response.type}" + ("" if ok else
                                     f", expected {case.expected_response_type}"), by="rule"))
    wanted = [(name, value, EXPECTATIONS.get(name), "expectation") for name, value in
              case.behavior_expectations.items()]
    wanted += [(name, True, ANTI_PATTERNS.get(name), "anti_pattern") for name in case.anti_patterns]
    for name, value, behaviour, kind in wanted:
        if behaviour is None:
            checks.append(BehaviourCheck(name, kind, value, NOT_SCORED,
                                         f"no rule or judge rubric for {name!r}", not_scored=UNKNOWN))
            continue
        checks.append(await _check(case, response, name, value, behaviour, judge))
    return checks


async def _check(case: Case, response: Response, name: str, value: Any, behaviour: Behaviour,
                 judge: Judge | None) -> BehaviourCheck:
    present, seen = behaviour.settle(response, value)
    check = BehaviourCheck(name, behaviour.kind, value, NOT_SCORED, seen)
    if present is not None:
        check.rule = {"verdict": _verdict(behaviour, present, value), "reason": seen}
        check.verdict, check.by = check.rule["verdict"], "rule"
    if behaviour.judged and judge is not None:
        answer = await judge.ask(case, response, behaviour.describes)
        if answer.present is not None:
            check.judge = {"verdict": _verdict(behaviour, answer.present, value), "reason": answer.reason,
                           "cached": answer.cached}
            if check.by is None:
                check.verdict, check.reason, check.by = check.judge["verdict"], answer.reason, "judge"
        else:
            # Kept even where the rule decided, so the report counts every question the judge left unanswered.
            check.judge = {"verdict": None, "reason": f"judge failed: {answer.reason}", "cached": False}
            if check.by is None:
                check.reason, check.not_scored = check.judge["reason"], JUDGE_ERROR
    elif behaviour.judged and check.by is None:
        check.reason, check.not_scored = f"{seen}; needs a judge (--judge-url, --judge-model)", NEEDS_JUDGE
    return check


def part_verdict(checks: list[dict[str, Any]]) -> str | None:
    """A case's tool-call or behaviour part: fail if a check failed, pass if every check passed,
    not scored if some had no verdict; None when the case asks nothing of that part."""
    if not checks:
        return None
    verdicts = [c.get("verdict") or (PASS if c.get("passed") else FAIL) for c in checks]
    if FAIL in verdicts:
        return FAIL
    return PASS if all(v == PASS for v in verdicts) else NOT_SCORED


def overall_verdict(*parts: str | None) -> str:
    """Fail if a part failed; not scored if a part is unscored or the case asks nothing; else pass."""
    if FAIL in parts:
        return FAIL
    if NOT_SCORED in parts or not any(parts):
        return NOT_SCORED
    return PASS
