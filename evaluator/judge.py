"""The LLM judge: asks an OpenAI-compatible model whether a reply shows a behaviour, with a cache.

One request per (case, reply, rubric): the rubric is a behaviour in words (evaluator/behavior.py),
the judge answers {"answer": "yes"|"no", "reason": "..."}. Answers are cached in a JSONL file
beside the evals, keyed by the judge model, the case, the reply and the rubric, so resuming or
repeating an eval does not ask again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError, field_validator

from evaluator.clients import BackendError, OpenAIClient

if TYPE_CHECKING:
    from evaluator.prompts import Case
    from evaluator.scoring import Response

API_KEY_ENV = "SYNAPTIC_JUDGE_API_KEY"  # read at run time, never written anywhere
CACHE_NAME = "judge-cache.jsonl"
SYSTEM_LIMIT = 4000  # characters of the case's system prompt the judge reads
JUDGE_SYSTEM = (
    "You grade one reply of an AI assistant against one behaviour. You are given the behaviour, the "
    "conversation the assistant saw, the text of its reply and the tool calls it made. Decide whether the "
    "reply shows the behaviour. Answer with JSON only: "
    '{"answer": "yes" or "no", "reason": "one short sentence"}')
THINKING_RE = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass
class JudgeAnswer:
    present: bool | None  # None: the judge could not be asked or did not answer readably
    reason: str
    cached: bool = False


def one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


class Verdict(BaseModel):
    """What the judge is asked to answer; pydantic already reads "yes"/"no" and true/false as a bool."""

    answer: bool
    reason: str = ""

    @field_validator("answer", mode="before")
    @classmethod
    def pass_or_fail(cls, value: Any) -> Any:
        words = {"pass": True, "fail": False}
        return words.get(value.strip().lower(), value) if isinstance(value, str) else value


def read_answer(text: str) -> tuple[bool | None, str]:
    """The judge's yes/no and reason from its reply: a JSON object (fenced or not), else a leading yes/no."""
    text = THINKING_RE.sub("", text or "").strip()
    start = text.find("{")
    if start != -1:
        try:
            value, _ = json.JSONDecoder().raw_decode(text, start)
            verdict = Verdict.model_validate(value)
            return verdict.answer, one_line(verdict.reason) or "(no reason given)"
        except (json.JSONDecodeError, ValidationError):
            pass
    match = re.match(r"\W*(yes|no)\b[\s.:,-]*(.*)", text, re.IGNORECASE | re.DOTALL)
    if match:
        return match.group(1).lower() == "yes", one_line(match.group(2)) or "(no reason given)"
    return None, f"unreadable answer: {one_line(text, 80)!r}"


def judge_messages(case: Case, response: Response, rubric: str) -> list[dict[str, str]]:
    calls = json.dumps([c.to_dict() for c in response.calls], ensure_ascii=False) if response.calls else "(none)"
    system = case.system or ""
    if len(system) > SYSTEM_LIMIT:
        system = system[:SYSTEM_LIMIT] + " [...]"
    conversation = (f"System prompt:\n{system}\n\n" if system else "") + f"User:\n{case.question}"
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": f"Behaviour: the reply {rubric}.\n\n{conversation}\n\n"
                                    f"Reply text:\n{response.prose or '(none)'}\n\nTool calls:\n{calls}\n\n"
                                    "Does the reply show the behaviour?"},
    ]


class Judge:
    """Asks one judge model; remembers every readable answer in the cache file."""

    def __init__(self, client: OpenAIClient, model: str, cache_path: Path):
        self.client = client
        self.model = model
        self.cache_path = Path(cache_path)
        self.cache: dict[str, dict[str, Any]] = {}
        self.asked = 0  # requests sent this run (cache misses)
        try:
            with self.cache_path.open(encoding="utf-8") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a kill
                    if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                        self.cache[entry["key"]] = entry
        except FileNotFoundError:
            pass

    def key(self, case: Case, response: Response, rubric: str) -> str:
        what = {"judge": self.model, "case": [case.id, case.system, case.question],
                "reply": [response.content, [c.to_dict() for c in response.calls]], "rubric": rubric}
        return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    async def ask(self, case: Case, response: Response, rubric: str) -> JudgeAnswer:
        key = self.key(case, response, rubric)
        if key in self.cache:
            entry = self.cache[key]
            return JudgeAnswer(entry["present"], entry["reason"], cached=True)
        self.asked += 1
        try:
            result = await self.client.chat(self.model, judge_messages(case, response, rubric), None,
                                            temperature=0.0, max_tokens=200, stream=False)
        except BackendError as exc:
            return JudgeAnswer(None, one_line(str(exc)))
        present, reason = read_answer(result.content)
        if present is not None:  # an unreadable answer is asked again next time
            entry = {"key": key, "present": present, "reason": reason, "judge": self.model, "case": case.id,
                     "rubric": rubric}
            self.cache[key] = entry
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        return JudgeAnswer(present, reason)

    async def aclose(self) -> None:
        await self.client.aclose()
