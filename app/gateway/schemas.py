"""Request models. `extra="allow"`: every OpenAI/vLLM parameter we do not check passes through untouched."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no "yes" -> True: what we check is what vLLM gets


class ChatMessage(_Passthrough):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class _Generation(_Passthrough):
    model: str | None = Field(default=None, min_length=1, max_length=256)  # default: the served model
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=16)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
