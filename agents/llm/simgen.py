"""What the simulated model says: deterministic, schema-valid JSON for a chat request.

The built-in agents get answers that read like their job (a task, an artifact, an update, a
review), built from the goal and task lines of the prompt. Any other schema gets a generic
answer that satisfies its JSON schema. Every answer is marked as simulated.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

_VERBS = ["Draft", "Outline", "Research", "Prototype", "Refine", "Summarise", "Test", "Compare"]
_THINGS = ["the core idea", "a first version", "open questions", "the main risks",
           "a short checklist", "the key numbers", "user feedback", "next milestones"]
_FEEDBACK = ["Good progress; tighten the scope.", "Useful, but cite sources next time.",
             "Clear and concrete; keep going.", "Too vague; pick one measurable outcome.",
             "Solid step; check it against the goal."]


def rng_for(*parts: object) -> random.Random:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


_LINES = {label: re.compile(rf"^{label}:\s*(.+)$", re.MULTILINE) for label in ("Goal", "Task")}


def _line(messages: list[dict[str, str]], label: str) -> str:
    """The text after "LABEL:" at the start of a line, in the last message that has one."""
    pattern = _LINES.get(label) or re.compile(rf"^{label}:\s*(.+)$", re.MULTILINE)
    marker = f"{label}:"
    for message in reversed(messages):
        content = message.get("content", "")
        if marker in content:  # most messages have no such line: skip the regex
            found = pattern.search(content)
            if found:
                return found.group(1).strip()
    return ""


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def generate(schema_name: str, schema: dict[str, Any] | None,
             messages: list[dict[str, str]], rng: random.Random) -> dict[str, Any]:
    goal = _line(messages, "Goal") or "the stack's goal"
    task = _line(messages, "Task") or f"{rng.choice(_VERBS)} {rng.choice(_THINGS)}"
    if schema_name == "PlannerOutput":
        chosen = f"{rng.choice(_VERBS)} {rng.choice(_THINGS)} for: {_short(goal, 120)}"
        return {"task": _short(chosen, 300),
                "rationale": "[simulated] the next small step that moves the goal forward"}
    if schema_name == "BuilderOutput":
        body = "\n".join(f"- {rng.choice(_VERBS).lower()} {rng.choice(_THINGS)}" for _ in range(3))
        return {"title": _short(f"[simulated] {task}", 200),
                "content": f"Simulated artifact for: {task}\n{body}"}
    if schema_name == "CommunicatorOutput":
        return {"message": _short(f"[simulated] Finished '{task}'. Next: keep iterating.", 1000)}
    if schema_name == "ReviewerOutput":
        # The simulated reviewer never declares a goal met: simulated stacks run until paused.
        return {"score": rng.randint(3, 9), "feedback": f"[simulated] {rng.choice(_FEEDBACK)}",
                "goal_met": False}
    return _from_schema(schema or {"type": "object"}, schema or {}, rng)


def _from_schema(node: dict[str, Any], root: dict[str, Any], rng: random.Random) -> Any:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return _from_schema(root.get("$defs", {}).get(name, {}), root, rng)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            options = [o for o in node[key] if o.get("type") != "null"] or node[key]
            return _from_schema(options[0], root, rng)
    if "enum" in node:
        return rng.choice(node["enum"])
    if "const" in node:
        return node["const"]
    kind = node.get("type", "string")
    if kind == "object":
        props = node.get("properties", {})
        return {k: _from_schema(v, root, rng) for k, v in props.items()}
    if kind == "array":
        count = max(int(node.get("minItems", 1)), 1)
        return [_from_schema(node.get("items", {}), root, rng) for _ in range(count)]
    if kind == "integer":
        low = int(node.get("minimum", 0))
        return rng.randint(low, int(node.get("maximum", low + 10)))
    if kind == "number":
        bottom = float(node.get("minimum", 0.0))
        return round(rng.uniform(bottom, float(node.get("maximum", bottom + 1.0))), 3)
    if kind == "boolean":
        return False
    text = f"[simulated] {rng.choice(_VERBS).lower()} {rng.choice(_THINGS)}"
    low, high = int(node.get("minLength", 0)), int(node.get("maxLength", 200))
    return _short(text.ljust(low, "."), max(high, 1))
