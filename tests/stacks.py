"""The stacks the tests run over, read from stacks/ (never a list kept here), and one way to parse them."""

from __future__ import annotations

import json
from typing import Any

from stackspec.settings import StackSettings, parse_settings, settings_from_config
from stackspec.stackfile import (
    SECRET_PLACEHOLDERS,
    global_stacks,
    read_stack_config,
    site_stacks,
    stack_file,
    with_placeholders,
)

SITE_STACKS: list[str] = site_stacks()  # dev, staging, prod, prod-dr, ... (every stack but global)
GLOBAL_STACKS: list[str] = global_stacks()


def stack_settings(stack: str) -> StackSettings:
    """A site stack's settings as the program parses them, secrets it does not set as placeholders."""
    raw, _ = read_stack_config(stack_file(stack))
    return settings_from_config(with_placeholders(raw))


def stack_sections(stack: str) -> dict[str, Any]:
    """A stack file's sections as plain objects (camelCase keys, prefix stripped)."""
    raw, _ = read_stack_config(stack_file(stack))
    return {k.split(":", 1)[1]: json.loads(v) for k, v in raw.items()}


def settings_with(stack: str, **sections: Any) -> StackSettings:
    """A stack's settings with whole sections replaced (camelCase section names)."""
    values = stack_sections(stack) | sections
    return parse_settings(values, {"apiKeyHashes": SECRET_PLACEHOLDERS["apiKeyHashes"]})
