"""The stream relay's pure parts, no servers: cutting upstream bytes at event boundaries, and the scan that
passes blocks through untouched unless they hold [DONE], the usage chunk or a session's text."""

from __future__ import annotations

import json

import pytest

from app.gateway.proxy import StreamAccount, split_block


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


TOKEN = event({"choices": [{"index": 0, "delta": {"content": "hi "}, "finish_reason": None}]})
USAGE = event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(("buffer", "block", "rest"), [
    (TOKEN, TOKEN, b""),
    (TOKEN + TOKEN[:10], TOKEN, TOKEN[:10]),
    (TOKEN[:-1], b"", TOKEN[:-1]),  # one newline short of a whole event
    (b"data: [DONE]\r\n\r\ndata: {", DONE, b"data: {"),  # CRLF framing becomes LF
    (b"data: x\r\n\r", b"", b"data: x\n\r"),  # a CR at the end waits for its LF
])
def test_split_block_cuts_only_at_event_boundaries(buffer: bytes, block: bytes, rest: bytes) -> None:
    assert split_block(buffer) == (block, rest)


def test_split_block_reassembles_any_split_of_a_stream() -> None:
    stream = TOKEN * 3 + USAGE + DONE
    for cut in range(1, len(stream)):
        out, rest = b"", b""
        for piece in (stream[:cut], stream[cut:]):
            block, rest = split_block(rest + piece)
            out += block
        assert out == stream and rest == b""


def test_scan_passes_plain_blocks_through_as_they_are() -> None:
    account = StreamAccount(collect_text=False, forward_usage_chunk=False)
    block = TOKEN * 5
    assert account.scan(block) is block  # not even copied
    assert not account.done and account.usage is None


def test_scan_reads_usage_hides_it_unless_asked_and_stops_at_done() -> None:
    # [DONE] itself is held back: the relay sends it once the turn is stored (acknowledged means stored).
    hidden = StreamAccount(collect_text=False, forward_usage_chunk=False)
    assert hidden.scan(TOKEN + USAGE + DONE + TOKEN) == TOKEN  # nothing from [DONE] on
    assert hidden.done and hidden.usage == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    shown = StreamAccount(collect_text=False, forward_usage_chunk=True)
    assert shown.scan(TOKEN + USAGE + DONE) == TOKEN + USAGE


def test_scan_collects_a_sessions_text_and_keeps_odd_events() -> None:
    account = StreamAccount(collect_text=True, forward_usage_chunk=False)
    odd = b": keep-alive comment\n\n"
    block = TOKEN + odd + event({"choices": [{"index": 1, "delta": {"content": "other choice"}}]}) + TOKEN
    assert account.scan(block) == block
    assert account.text == ["hi ", "hi "]
    assert account.scan(b'data: {"choices":[{"index":0,"text":"legacy"}]}\n\n' + DONE)
    assert account.text[-1] == "legacy" and account.done


def test_content_that_mentions_done_does_not_end_the_stream() -> None:
    account = StreamAccount(collect_text=False, forward_usage_chunk=False)
    block = event({"choices": [{"index": 0, "delta": {"content": "say [DONE] now"}}]})
    assert account.scan(block) == block and not account.done
