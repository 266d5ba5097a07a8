"""Bounds on tool calling and structured outputs: what a request's `tools` and `response_format` may cost.

vLLM compiles every JSON Schema it is given (a tool's `parameters` under a named or `required` tool_choice,
`response_format`'s `schema`) into a grammar for that request, and writes every tool into the prompt. These
checks keep one request from handing it a schema that takes long to compile or a prompt of tool definitions:
the count of tools, the bytes of one schema and of all tools, the depth of a schema (gateway settings, each
400 naming its setting). Whether a schema compiles at all is the structured-output backend's call: vLLM
answers 400, which is relayed as it is.
"""

from __future__ import annotations

import json
from typing import Any

from app.gateway.errors import ApiError
from app.gateway.schemas import ChatCompletionRequest
from app.gateway.settings import GatewayTuning


def json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def json_depth(value: Any) -> int:
    """Nesting of objects and arrays (a flat object is 1); an explicit stack, no recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _check_schema(settings: GatewayTuning, schema: dict[str, Any] | None, param: str) -> None:
    if schema is None:
        return
    size = json_bytes(schema)
    if size > settings.max_schema_bytes:
        raise ApiError(400, f"{param} is {size} bytes; the limit is {settings.max_schema_bytes} "
                            "(gateway setting maxSchemaBytes)", code="schema_too_large", param=param)
    depth = json_depth(schema)
    if depth > settings.max_schema_depth:
        raise ApiError(400, f"{param} nests {depth} levels; the limit is {settings.max_schema_depth} "
                            "(gateway setting maxSchemaDepth)", code="schema_too_deep", param=param)


def check_structured(settings: GatewayTuning, request: ChatCompletionRequest, raw: dict[str, Any]) -> None:
    """400 naming the bound for tools or a response_format schema over the gateway's limits."""
    tools = request.tools or []
    if len(tools) > settings.max_tools:
        raise ApiError(400, f"{len(tools)} tools; the limit is {settings.max_tools} (gateway setting maxTools)",
                       code="too_many_tools", param="tools")
    for i, tool in enumerate(tools):
        _check_schema(settings, tool.function.parameters, f"tools.{i}.function.parameters")
    if tools:
        size = json_bytes(raw.get("tools"))
        if size > settings.max_tools_bytes:
            raise ApiError(400, f"tools take {size} bytes; the limit is {settings.max_tools_bytes} "
                                "(gateway setting maxToolsBytes)", code="tools_too_large", param="tools")
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        _check_schema(settings, fmt.json_schema.schema_, "response_format.json_schema.schema")
