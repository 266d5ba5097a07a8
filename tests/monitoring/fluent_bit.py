"""Fluent Bit's parsing, applied in Python to the rendered config (no Fluent Bit binary exists here).

Debian bookworm has no fluent-bit package and nothing may be downloaded, so the tests take the regex
and the filter settings from the rendered fluent-bit.yaml and apply them the way Fluent Bit does:
a tail input's regex parser per line, then a `parser` filter on the records whose tag matches.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any


def python_regex(onigmo: str) -> re.Pattern[str]:
    """Fluent Bit (Onigmo) named groups `(?<x>...)` are Python's `(?P<x>...)`."""
    return re.compile(re.sub(r"\(\?<([A-Za-z_]\w*)>", r"(?P<\1>", onigmo))


def tail_tag(tag_pattern: str, path: str) -> str:
    """The tail input's tag: `*` replaced by the file path with `/` turned into `.`."""
    return tag_pattern.replace("*", path.lstrip("/").replace("/", "."))


def apply_parser(parser: dict[str, Any], text: str) -> dict[str, Any] | None:
    if parser["format"] == "regex":
        match = python_regex(parser["regex"]).match(text)
        return match.groupdict() if match else None
    if parser["format"] == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None
    raise NotImplementedError(parser["format"])


def process(config: dict[str, Any], path: str, line: str) -> tuple[str, dict[str, Any]]:
    """One container log line through the input parser and every matching `parser` filter."""
    parsers = {p["name"]: p for p in config["parsers"]}
    tail = config["pipeline"]["inputs"][0]
    tag = tail_tag(tail["tag"], path)
    record = apply_parser(parsers[tail["parser"]], line)
    assert record is not None, f"the input parser {tail['parser']} did not match: {line!r}"
    for flt in config["pipeline"]["filters"]:
        if flt["name"] != "parser" or not fnmatch.fnmatchcase(tag, flt["match"]):
            continue
        parsed = apply_parser(parsers[flt["parser"]], str(record.get(flt["key_name"], "")))
        if parsed is None:
            continue  # Fluent Bit keeps the record unchanged when the parser does not match
        kept = {k: v for k, v in record.items() if k != flt["key_name"]} if flt.get("reserve_data") == "on" else {}
        record = {**kept, **parsed}
    return tag, record
