"""A prompt as chained block hashes, and a bounded LRU of the blocks a backend was sent.

The gateway has no tokenizer: the prompt is rendered as text (ChatML-like for chat: what precedes a turn is
rendered identically in every later turn, so a conversation resent whole shares its earlier blocks) and cut
into blocks of `block_tokens` x 4 characters. Block i's hash covers block i and the hash of block i-1, so a
block's hash names its whole prefix: one changed character changes that block's hash and every later one.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

CHARS_PER_TOKEN = 4  # the usual English/BPE estimate; the hit estimate needs proportions, not exact counts
_ROLE_FIELDS = ("role", "content")


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True, ensure_ascii=False)
    extra = {k: v for k, v in message.items() if k not in _ROLE_FIELDS and v is not None}
    tail = json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else ""
    return f"<|im_start|>{message.get('role', '')}\n{text}{tail}<|im_end|>\n"


def prompt_text(body: dict[str, Any]) -> str:
    """The prompt of a chat or completions request body, rendered as routing hashes it."""
    messages = body.get("messages")
    if isinstance(messages, list):
        tools = body.get("tools")
        head = json.dumps(tools, sort_keys=True, ensure_ascii=False) if tools else ""
        return head + "".join(_message_text(m) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompt = prompt[0]  # several prompts: the first decides (they go to one backend together)
    if isinstance(prompt, list):
        return " ".join(str(t) for t in prompt)  # token ids: about one token per id
    return prompt if isinstance(prompt, str) else ""


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def block_hashes(text: str, block_chars: int) -> list[int]:
    """The chained hashes of the full blocks of `text` (a partial last block is not cached by vLLM either)."""
    data = text.encode("utf-8", errors="surrogatepass")
    hashes: list[int] = []
    previous = b""
    for end in range(block_chars, len(data) + 1, block_chars):
        previous = hashlib.blake2b(previous + data[end - block_chars:end], digest_size=8).digest()
        hashes.append(int.from_bytes(previous, "big"))
    return hashes


class BlockLRU:
    """The block hashes most recently sent to one backend, at most `capacity` of them: a stand-in for what its
    prefix cache holds. A request's blocks are touched last-first, so a prefix outlives its extensions (vLLM
    evicts the tail of a chain before its head, too)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least one block")
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def add(self, blocks: Iterable[int]) -> None:
        for block in reversed(list(blocks)):
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def matched(self, blocks: Iterable[int]) -> int:
        """How many leading blocks of a chain are held (a chain is cached only up to its first miss)."""
        count = 0
        for block in blocks:
            if block not in self._blocks:
                break
            count += 1
        return count
