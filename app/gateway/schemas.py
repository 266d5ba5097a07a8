"""Request models: the allowlist of what reaches vLLM, per endpoint, typed and bounded.

`extra="forbid"`: a field not listed here is a 400 `unknown_parameter` naming it (body.parse_model), so
vLLM's engine-level knobs (`min_tokens`, `prompt_logprobs`, `prompt_embeds`, `allowed_token_ids`,
`chat_template`, `priority`, vLLM's own structured-output grammars (`structured_outputs`: regex, grammar,
choice), ...) cannot be reached through the gateway; OpenAI's `tools` and `response_format` can, bounded.
`strict=True`: no `"yes"` -> True; what we check is what vLLM gets. These models are also the gateway's
OpenAPI document (the routes declare them), which the schema-driven fuzzer reads.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, model_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOKEN_ID = 2**31 - 1  # vLLM checks ids against the vocabulary; this only keeps them machine-sized
MAX_STOP = 4
MAX_PROMPTS = 256  # a list of prompts; the sequences they make are bounded again (max_sequences_per_request)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """A content part: text only (no images, audio or files: the served model reads text)."""

    type: Literal["text"]
    text: str


# OpenAI's function names: letters, digits, `_` and `-`, at most 64.
FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
# A JSON Schema object (tool parameters, response_format's schema). Its size and depth are gateway settings
# (api/structured.py); whether it compiles is the structured-output backend's call (vLLM's 400, relayed).
JsonSchema = dict[str, Any]


class FunctionCall(_Strict):
    name: FunctionName
    arguments: str  # JSON text, as the model wrote it (OpenAI's shape); counted in the input size


class ToolCall(_Strict):
    """An assistant's call, as vLLM returned it; sent back in the history of an agent loop."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Strict):
    """One message; the tool-calling shapes are checked together (`_shape`): a `tool` message answers a call
    (`tool_call_id`), only an assistant message carries `tool_calls`, and its `content` may then be null."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(min_length=1, max_length=64)] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    tool_calls: Annotated[list[ToolCall], Field(min_length=1, max_length=128)] | None = None
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message carries tool_calls")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("a tool message needs tool_call_id (the id of the call it answers); "
                             "no other role takes one")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only on an assistant message with tool_calls)")
        return self


class FunctionDefinition(_Strict):
    name: FunctionName
    description: str | None = None  # bounded with the whole tool (max_tools_bytes)
    parameters: JsonSchema | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: FunctionName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaSpec(_Strict):
    name: FunctionName
    description: str | None = Field(default=None, max_length=4096)
    schema_: JsonSchema | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(_Strict):
    include_usage: bool | None = None


Stop = str | Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=MAX_STOP)]
LogitBias = Annotated[
    dict[Annotated[str, Field(pattern=r"^\d{1,10}$")], Annotated[float, Field(ge=-100, le=100)]],
    Field(max_length=300),
]


class _Generation(_Strict):
    model: str | None = Field(default=None, min_length=1, max_length=256)  # default: the served model
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)  # at most the cap; always sent (the cap if omitted)
    n: int = Field(default=1, ge=1, le=16)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1, le=1000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    stop: Stop | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    logit_bias: LogitBias | None = None
    user: str | None = Field(default=None, max_length=256)
    # vLLM's: generate until max_tokens. Harmless here because max_tokens is always sent, at most the cap.
    ignore_eos: bool | None = None


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Tool calling and structured outputs (OpenAI's shapes; bounds in api/structured.py).
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # A gateway extension (also the X-Session-Id header): continue a stored conversation.
    session_id: str | None = Field(default=None, min_length=8, max_length=128,
                                   pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{7,127}$")


TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1)]


class CompletionRequest(_Generation):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)


# ---- the OpenAPI document -----------------------------------------------------------------------------
# The generation routes read their body themselves (size, JSON, allowlist: body.py), so FastAPI does not
# see a body parameter; `request_body` declares the model in the document, and `install_request_schemas`
# puts the models it refers to under components/schemas.

_REF = "#/components/schemas/{model}"
REQUEST_MODELS: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": _REF.format(model=model.__name__)}}}}}


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template=_REF, mode="validation")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def install_request_schemas(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            document.setdefault("components", {}).setdefault("schemas", {}).update(_components())
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
