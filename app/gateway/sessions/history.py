"""Build the message list sent to vLLM: system prompt + stored history (trimmed) + the new messages.

History is trimmed by whole exchanges: a user message and everything after it up to the next user message
(the assistant's `tool_calls`, the `tool` results that answer them, the final answer). So a `tool` message
never reaches vLLM without the call it answers.

Token counts are an approximation, ceil(characters / 4) + 4 per message (ChatML framing). That is what
English BPE averages; it needs no tokenizer in the gateway. The budget is a guard against unbounded
growth, not an exact fit to the context window; vLLM still rejects a prompt that is too long (400).
"""

from __future__ import annotations

from typing import Any

MESSAGE_OVERHEAD_TOKENS = 4


def content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: count the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def message_chars(message: dict[str, Any]) -> int:
    """The characters a message puts into the prompt: its text and its tool calls' names and arguments."""
    calls = message.get("tool_calls") or []
    return len(content_text(message)) + sum(
        len(str((c.get("function") or {}).get("name", ""))) + len(str((c.get("function") or {}).get("arguments", "")))
        for c in calls if isinstance(c, dict))


def approx_tokens(message: dict[str, Any]) -> int:
    return -(-message_chars(message) // 4) + MESSAGE_OVERHEAD_TOKENS


def answer_message(message: dict[str, Any]) -> dict[str, Any]:
    """The assistant message to store from vLLM's answer: its text, and its tool calls when it made any."""
    calls = message.get("tool_calls") or []
    if not calls:
        return {"role": "assistant", "content": content_text(message)}
    kept = [{"id": c.get("id"), "type": "function",
             "function": {"name": (c.get("function") or {}).get("name"),
                          "arguments": (c.get("function") or {}).get("arguments")}}
            for c in calls if isinstance(c, dict)]
    return {"role": "assistant", "content": message.get("content") or None, "tool_calls": kept}


def exchanges(history: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """History cut before each user message; whatever precedes the first user message (an exchange whose
    start was trimmed by the store's hard cap) is dropped."""
    out: list[list[dict[str, Any]]] = []
    for message in history:
        if message.get("role") == "user":
            out.append([message])
        elif out:
            out[-1].append(message)
    return out


def compose(
    *,
    stored_system: str | None,
    history: list[dict[str, Any]],
    request_messages: list[dict[str, Any]],
    budget: int,
) -> list[dict[str, Any]]:
    """The request's own system message wins over the stored one; the oldest exchanges go first when over budget.

    History is dropped whole exchanges at a time from the front, so it never starts with an assistant reply
    or a tool result. A request that continues the last exchange (it starts with a `tool` result, or any
    message but a user one) keeps that exchange whatever the budget: its results answer the call in it.
    """
    request_system = [m for m in request_messages if m.get("role") in ("system", "developer")]
    rest = [m for m in request_messages if m.get("role") not in ("system", "developer")]
    system = request_system or ([{"role": "system", "content": stored_system}] if stored_system else [])
    groups = exchanges(history)
    pinned: list[dict[str, Any]] = []
    if groups and rest and rest[0].get("role") != "user":
        pinned = groups.pop()
    used = sum(approx_tokens(m) for m in system + pinned + rest)
    kept: list[dict[str, Any]] = []
    for group in reversed(groups):
        cost = sum(approx_tokens(m) for m in group)
        if used + cost > budget:
            break
        kept = group + kept
        used += cost
    return system + kept + pinned + rest
