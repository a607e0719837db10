"""Writes the sample data in examples/: SFT and KTO sets with tool calls, and a prompt set.

Deterministic (seeded), so `python examples/make_sample_data.py` reproduces
the committed files byte for byte. The domain is a notes assistant whose tool
calls must carry the session and workspace ids from the system prompt, as in
the original Synaptic Tuner's datasets. Each row offers the tools it needs
and one or two others (in random order), so choosing the right tool is part
of what is learned. The prompt set is held out: its topics, folders and
phrasings appear nowhere in the training data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fn(name: str, description: str, properties: dict, required: list[str]) -> dict:
    context = {"type": "object", "description": "ids from the system prompt",
               "properties": {"sessionId": {"type": "string"}, "workspaceId": {"type": "string"}},
               "required": ["sessionId", "workspaceId"]}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {**properties, "context": context},
                       "required": [*required, "context"]}}}


TOOLS = [
    fn("search_notes", "Full-text search over the notes in the workspace.",
       {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 50}}, ["query"]),
    fn("read_note", "Read one note by its path.", {"path": {"type": "string"}}, ["path"]),
    fn("create_note", "Create a note.",
       {"path": {"type": "string"}, "content": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}}}, ["path", "content"]),
    fn("append_to_note", "Append text to the end of a note.",
       {"path": {"type": "string"}, "content": {"type": "string"}}, ["path", "content"]),
    fn("list_folder", "List the notes and folders in a folder.",
       {"path": {"type": "string"}, "sort": {"type": "string", "enum": ["name", "modified", "created"]}}, ["path"]),
    fn("get_workspace", "Describe the current workspace: name, folders, recent notes.", {}, []),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOLS]

TOPICS = ["rust ownership", "sourdough starter", "quarterly budget", "garden layout", "trip to Lisbon",
          "reading list", "team offsite", "python packaging", "marathon training", "podcast ideas",
          "kitchen renovation", "thesis outline", "bird sightings", "job applications", "home network"]
FOLDERS = ["projects", "journal", "recipes", "work", "travel", "ideas", "archive"]
# Only the prompt set uses these: evaluation is on cases the training never saw.
HELD_OUT_TOPICS = ["tax receipts", "piano practice", "wedding guests", "cloud migration", "camping gear",
                   "chess openings"]
HELD_OUT_FOLDERS = ["personal", "school", "inbox"]


def slug(text: str) -> str:
    return text.lower().replace(" ", "-")


def context(rng: random.Random) -> tuple[str, str]:
    return f"sess_{rng.randrange(16**6):06x}", f"ws_{rng.randrange(16**4):04x}"


def system_prompt(session: str, workspace: str) -> str:
    return (f"You are a notes assistant working in a user's vault. Session: {session}. Workspace: {workspace}. "
            "Pass both ids as `context` in every tool call.")


def call(name: str, args: dict, session: str, workspace: str, call_id: str) -> dict:
    args = {**args, "context": {"sessionId": session, "workspaceId": workspace}}
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


KINDS = ["search", "read", "create", "append", "list", "workspace", "search_read", "none"]


def scenario(rng: random.Random, held_out: bool = False, kind: str | None = None) -> tuple[str, list[tuple[str, dict]], str, str]:
    """(user question, [(tool, args)], tool result text, final answer).

    A call's arguments may depend on an earlier call's result (search, then read what it found): such
    calls come as one step each, see `steps`."""
    topic = rng.choice(HELD_OUT_TOPICS if held_out else TOPICS)
    folder = rng.choice(HELD_OUT_FOLDERS if held_out else FOLDERS)
    path = f"{folder}/{slug(topic)}.md"
    kind = kind or rng.choice(KINDS + ["none"])  # two in nine training rows need no tool

    def ask(train: list[str], test: list[str]) -> str:
        return rng.choice(test if held_out else train)

    if kind == "search":
        limit = rng.choice([3, 5, 10])
        q = ask([f"Find my notes about {topic}.", f"Do I have anything on {topic}?",
                 f"Search for {topic}, top {limit} please."],
                [f"Look up {topic} in my notes, {limit} results at most.", f"Any notes mentioning {topic}?"])
        return q, [("search_notes", {"query": topic, "limit": limit})], json.dumps([path]), f"I found one note: {path}."
    if kind == "read":
        q = ask([f"Open {path}.", f"What does {path} say?", f"Read me the note at {path}."],
                [f"Show me the contents of {path}.", f"Pull up {path} for me."])
        return q, [("read_note", {"path": path})], f"# {topic.title()}\nFirst draft.", f"{path} holds a first draft on {topic}."
    if kind == "create":
        tags = rng.sample(["todo", "draft", "idea", "personal", "work"], 2)
        q = ask([f"Start a note at {path} about {topic}, tagged {tags[0]} and {tags[1]}.",
                 f"Create {path} with a heading for {topic}; tags: {', '.join(tags)}."],
                [f"Make a new note {path} on {topic} and tag it {tags[0]}, {tags[1]}."])
        return (q, [("create_note", {"path": path, "content": f"# {topic.title()}\n", "tags": tags})],
                json.dumps({"created": path}), f"Created {path}.")
    if kind == "append":
        line = rng.choice(["call the plumber", "buy flour", "book the venue", "email Sam", "water the beans"])
        q = ask([f"Add '{line}' to {path}.", f"Append a line to {path}: {line}."],
                [f"Put '{line}' at the end of {path}."])
        return q, [("append_to_note", {"path": path, "content": f"- {line}\n"})], json.dumps({"ok": True}), f"Added it to {path}."
    if kind == "list":
        order = rng.choice(["name", "modified", "created"])
        q = ask([f"What's in my {folder} folder, sorted by {order}?", f"List {folder} by {order}."],
                [f"Show the {folder} folder ordered by {order}."])
        return (q, [("list_folder", {"path": folder, "sort": order})], json.dumps([path, f"{folder}/index.md"]),
                f"{folder} has {path} and {folder}/index.md.")
    if kind == "workspace":
        q = ask(["Which workspace am I in?", "Give me an overview of this vault."],
                ["Tell me about the current workspace.", "What does this vault contain?"])
        return q, [("get_workspace", {})], json.dumps({"name": "Personal", "folders": FOLDERS[:3]}), "You are in Personal."
    if kind == "search_read":
        q = ask([f"Find the note about {topic} and tell me what it says.",
                 f"Search for my {topic} note and read it to me."],
                [f"Locate the {topic} note and summarise it."])
        # Two steps: the path to read is only known once the search has answered.
        return (q, [("search_notes", {"query": topic, "limit": 1}), ("read_note", {"path": path})],
                json.dumps([path]) + "\n" + f"# {topic.title()}\nFirst draft.",
                f"The note {path} is a first draft on {topic}.")
    # No tool needed: each question with the answer it asks for (the answer drawn apart from the question
    # taught the model nothing it could use on a held-out question).
    answers = {
        "thanks": "Happy to help.",
        "abilities": "I can search, read, create and organise your notes.",
        "greeting": "Good morning! What shall we work on?",
        "name": f"Sure, {topic} is a clear folder name; short folder names work well.",
        "organise": f"One folder for {topic}, with a short index note, works well.",
        "place": f"Yes, {folder} suits notes on {topic}; one note per idea keeps them easy to find.",
    }
    intent = ask(["thanks", "abilities", "name", "greeting", "organise"], ["thanks", "abilities", "place"])
    q = {"thanks": rng.choice(["Thanks, that's all.", "Cheers, that's everything for now."] if held_out
                              else ["Thanks, that's all.", "Great, thank you!"]),
         "abilities": "What are you able to help with?" if held_out else "What can you do?",
         "greeting": "Good morning!",
         "name": f"Is {topic} a good name for a folder?",
         "organise": f"How should I organise notes about {topic}?",
         "place": f"Would {folder} be a sensible place for notes on {topic}?"}[intent]
    return q, [], "", answers[intent]


def steps(calls: list[tuple[str, dict]], result: str) -> list[tuple[list[tuple[str, dict]], list[str]]]:
    """The assistant's tool-calling turns: ([calls], [result of each]) per turn. A search followed by a
    read is two turns (the read needs the search's answer); anything else is one."""
    if [name for name, _ in calls] == ["search_notes", "read_note"]:
        found, content = result.split("\n", 1)
        return [([calls[0]], [found]), ([calls[1]], [content])]
    return [(calls, [result] * len(calls))] if calls else []


def offered_tools(rng: random.Random, needed: list[str]) -> list[dict]:
    """The tools a row offers: the ones it needs and one or two others, in random order."""
    others = [name for name in TOOL_NAMES if name not in needed]
    names = list(dict.fromkeys(needed)) + rng.sample(others, rng.randint(1, 2) + (not needed))
    rng.shuffle(names)
    return [TOOLS[TOOL_NAMES.index(name)] for name in names]


def sft_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        session, workspace = context(rng)
        question, calls, result, answer = scenario(rng)
        messages = [{"role": "system", "content": system_prompt(session, workspace)}, {"role": "user", "content": question}]
        for turn, (step_calls, results) in enumerate(steps(calls, result)):
            tool_calls = [call(name, args, session, workspace, f"call_{i}_{turn}_{j}")
                          for j, (name, args) in enumerate(step_calls)]
            messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
            for tc, text in zip(tool_calls, results):
                messages.append({"role": "tool", "tool_call_id": tc["id"], "content": text})
        messages.append({"role": "assistant", "content": answer})
        rows.append({"messages": messages, "tools": offered_tools(rng, [name for name, _ in calls])})
    return rows


def corrupt(rng: random.Random, calls: list[tuple[str, dict]], session: str, workspace: str) -> tuple[list, str]:
    """A realistic mistake: wrong tool, missing required argument, dropped ids, bad enum, made-up tool."""
    name, args = calls[0]
    mistake = rng.choice(["wrong_tool", "missing_arg", "dropped_context", "bad_enum", "invented_tool"])
    if mistake == "wrong_tool":
        other = rng.choice([t for t in TOOL_NAMES if t != name])
        return [call(other, args, session, workspace, "call_0")], mistake
    if mistake == "missing_arg" and args:
        args = dict(args)
        args.pop(next(iter(args)))
        return [call(name, args, session, workspace, "call_0")], mistake
    if mistake == "bad_enum":
        return [call("list_folder", {"path": "work", "sort": "size"}, session, workspace, "call_0")], mistake
    if mistake == "invented_tool":
        return [call("delete_everything", args, session, workspace, "call_0")], mistake
    bare = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
    return [bare], "dropped_context"


def kto_rows(rng: random.Random, n: int) -> list[dict]:
    rows = []
    while len(rows) < n:
        session, workspace = context(rng)
        question, all_calls, result, answer = scenario(rng)
        if not all_calls:
            continue
        calls = steps(all_calls, result)[0][0]  # the completion is the assistant's first turn
        prompt = [{"role": "system", "content": system_prompt(session, workspace)}, {"role": "user", "content": question}]
        good = rng.random() < 0.55
        if good:
            tool_calls = [call(name, args, session, workspace, f"call_{j}") for j, (name, args) in enumerate(calls)]
        else:
            tool_calls, _ = corrupt(rng, calls, session, workspace)
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": "", "tool_calls": tool_calls}],
                     "label": good, "tools": offered_tools(rng, [name for name, _ in all_calls])})
    return rows


def prompt_cases(rng: random.Random, n: int) -> list[dict]:
    """n cases, as many of each kind (a tool, a search then a read, no tool at all), held out."""
    cases = []
    tag_of = {"search_notes": "search", "read_note": "read", "create_note": "create", "append_to_note": "create",
              "list_folder": "browse", "get_workspace": "browse"}
    while len(cases) < n:
        session, workspace = context(rng)
        question, all_calls, result, _ = scenario(rng, held_out=True, kind=KINDS[len(cases) % len(KINDS)])
        turns = steps(all_calls, result)
        # One turn is asked: what the assistant must call first (a search before the read it leads to).
        calls = turns[0][0] if turns else []
        tags = sorted({tag_of[name] for name, _ in calls}) or ["no-tool"]
        if len(turns) > 1:
            tags.append("multi-step")
        cases.append({"id": f"case-{len(cases) + 1:03d}", "question": question,
                      "system": system_prompt(session, workspace), "tags": tags,
                      "expected_tools": [name for name, _ in calls],
                      "expected_context": {"sessionId": session, "workspaceId": workspace} if calls else {},
                      "tools": offered_tools(rng, [name for name, _ in all_calls])})
    return cases


def check(rows: list[dict]) -> None:
    """Every tool call names a defined tool (or is a deliberate mistake) and parses."""
    for row in rows:
        turns = row.get("messages") or row["prompt"] + row["completion"]
        for turn in turns:
            for tc in turn.get("tool_calls") or []:
                json.loads(tc["function"]["arguments"])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    rng = random.Random(20251122)
    sft, kto = sft_rows(rng, 200), kto_rows(rng, 100)
    cases = prompt_cases(random.Random(20261203), 24)  # its own seed: the set stays put when the data grows
    check(sft)
    check(kto)
    (HERE / "data").mkdir(exist_ok=True)
    (HERE / "prompts").mkdir(exist_ok=True)
    write_jsonl(HERE / "data" / "sft_tool_calls.jsonl", sft)
    write_jsonl(HERE / "data" / "kto_tool_calls.jsonl", kto)
    (HERE / "prompts" / "tool_calling.json").write_text(json.dumps(cases, indent=2, ensure_ascii=False) + "\n")
    good = sum(r["label"] for r in kto)
    print(f"sft: {len(sft)} rows; kto: {len(kto)} rows ({good} desirable); prompts: {len(cases)} cases")


if __name__ == "__main__":
    main()
