"""The local stack's settings: localstack/local.yaml (stack-file schema) plus a generated dev API key."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path
from typing import Any

import yaml

from localstack.files import write_private
from stackspec.settings import PROJECT, StackSettings, parse_settings

LOCAL_YAML = Path(__file__).with_name("local.yaml")
API_KEY_PREFIX = "sk-local-"


def read_stack_file(path: Path) -> dict[str, Any]:
    """Section objects of a `config: {qwen-serving:<section>: ...}` stack file, prefix stripped."""
    doc = yaml.safe_load(path.read_text()) or {}
    prefix = f"{PROJECT}:"
    return {k[len(prefix):]: v for k, v in (doc.get("config") or {}).items() if k.startswith(prefix)}


def ensure_api_key(state_dir: Path) -> str:
    """The development API key: random, made once, kept in `state_dir/api-key` (mode 0600)."""
    path = state_dir / "api-key"
    if path.is_file():
        key = path.read_text().strip()
        if key.startswith(API_KEY_PREFIX):
            return key
    key = API_KEY_PREFIX + secrets.token_urlsafe(24)
    write_private(path, key + "\n")
    return key


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def local_settings(api_key: str, *, path: Path = LOCAL_YAML, overrides: dict[str, Any] | None = None
                   ) -> StackSettings:
    """Parse the local stack file with the dev key's hash as apiKeyHashes (the same path a stack takes)."""
    values = read_stack_file(path)
    for section, fields in (overrides or {}).items():
        values[section] = {**values.get(section, {}), **fields}
    return parse_settings(values, {"apiKeyHashes": {key_hash(api_key): "local-dev"}})
