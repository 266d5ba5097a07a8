"""Build the message list sent to vLLM: system prompt + stored history (trimmed) + the new messages.

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


def approx_tokens(message: dict[str, Any]) -> int:
    return -(-len(content_text(message)) // 4) + MESSAGE_OVERHEAD_TOKENS


def compose(
    *,
    stored_system: str | None,
    history: list[dict[str, Any]],
    request_messages: list[dict[str, Any]],
    budget: int,
) -> list[dict[str, Any]]:
    """The request's own system message wins over the stored one; the oldest history goes first when over budget.

    History is dropped whole turns at a time from the front so it never starts with an assistant reply.
    """
    request_system = [m for m in request_messages if m.get("role") in ("system", "developer")]
    rest = [m for m in request_messages if m.get("role") not in ("system", "developer")]
    system = request_system or ([{"role": "system", "content": stored_system}] if stored_system else [])
    fixed = sum(approx_tokens(m) for m in system + rest)
    kept: list[dict[str, Any]] = []
    used = fixed
    for message in reversed(history):
        cost = approx_tokens(message)
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    while kept and kept[0].get("role") != "user":
        kept.pop(0)
    return system + kept + rest
