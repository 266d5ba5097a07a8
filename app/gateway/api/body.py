"""Reading and validating request bodies: size first (413), then JSON (400), then the schema (400/422).

Whatever the bytes, the answer is a 4xx in OpenAI's shape, never a 5xx: invalid UTF-8, nesting deeper than
`MAX_DEPTH` (100,000 `[` would exhaust the parser's recursion), numbers JSON cannot carry on (NaN,
Infinity, 1e999), lone UTF-16 surrogates (`"\\ud800"`: not encodable, so not forwardable).
(Duplicate keys: the last wins, and what vLLM gets is our own serialisation of what was checked.)
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from app.gateway.errors import ApiError

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 32  # checked on the parsed value; OpenAI bodies nest a handful of levels
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)


def invalid_json(message: str) -> ApiError:
    return ApiError(400, message, code="invalid_json")


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _too_deep(value: Any) -> bool:
    """Deeper than MAX_DEPTH (an explicit stack: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 `invalid_json` naming what is wrong."""
    try:
        data = json.loads(raw, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise invalid_json(f"The body nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise invalid_json(f"The body is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise invalid_json("The body must be a JSON object")
    if _too_deep(data):
        raise invalid_json(f"The body nests deeper than {MAX_DEPTH} levels")
    if _LONE_SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(data):
        raise invalid_json("The body has a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair)")
    return data


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    too_large = ApiError(413, f"Request body exceeds {max_bytes} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # also bounds chunked bodies with no Content-Length
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return parse_json_object(b"".join(chunks))


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list"}


def _location(loc: tuple[int | str, ...]) -> str:
    """`messages.0.content`: a union's member shows in pydantic's location as its type (`list[TextPart]`,
    `constrained-str`, `str`); those are not field names and are left out."""
    return ".".join(str(p) for p in loc
                    if not (isinstance(p, str) and ("[" in p or "-" in p or p in _TYPE_NAMES)))


def parse_model(model: type[M], data: dict[str, Any]) -> M:
    """The request as `model`: an unknown field is a 400 `unknown_parameter` naming it (only what is listed
    reaches vLLM); a wrong type or value a 422 `invalid_request` naming where."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        errors = err.errors()
        unknown = next((e for e in errors if e["type"] == "extra_forbidden"), None)
        if unknown is not None:
            name = _location(unknown["loc"])
            raise ApiError(400, f"Unknown or unsupported parameter: '{name}'", code="unknown_parameter",
                           param=name) from None
        first = errors[0]
        param = _location(first["loc"]) or None
        raise ApiError(422, f"{param}: {first['msg']}", code="invalid_request", param=param) from None
