"""Stack files (stacks/Pulumi.<stack>.yaml) read the way the Pulumi CLI hands them to the program.

Every value becomes a string (objects as JSON); `secure:` values cannot be decrypted offline and become
the caller's placeholders (and stay secret). Also: which stacks exist, read from stacks/ (never a list
written somewhere else).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STACKS_DIR = REPO / "stacks"
GLOBAL_MARKER = "qwen-serving:dns"  # the key only the global (DNS) stack has

# Offline stand-ins for secret config a stack file cannot carry decryptably. Each is obviously fake.
PLACEHOLDER_API_KEY = "plan-placeholder-key"
SECRET_PLACEHOLDERS: dict[str, str] = {
    "apiKeyHashes": json.dumps({hashlib.sha256(PLACEHOLDER_API_KEY.encode()).hexdigest(): "plan-placeholder"}),
    "alertmanagerWebhookUrl": "https://alerts.invalid/plan-placeholder",
    "alertmanagerSmtpPassword": "plan-placeholder",
    "logSinkPassword": "plan-placeholder",
    "grafanaAdminPassword": "plan-placeholder",
    "redisPassword": "plan-placeholder-redis-password",
}


def stack_file(stack: str) -> Path:
    return STACKS_DIR / f"Pulumi.{stack}.yaml"


def stack_name(path: Path) -> str:
    return path.name.removeprefix("Pulumi.").removesuffix(".yaml")


def all_stacks() -> list[str]:
    """Every stack with a file in stacks/, sorted."""
    return sorted(stack_name(p) for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def _config(path: Path) -> dict[str, object]:
    document = yaml.safe_load(path.read_text()) or {}
    return dict(document.get("config") or {})


def site_stacks() -> list[str]:
    """The site stacks (every stack but the global DNS one), in a stable order: dev, staging, prod, ..."""
    order = {"dev": 0, "staging": 1, "prod": 2, "prod-dr": 3}
    sites = [s for s in all_stacks() if GLOBAL_MARKER not in _config(stack_file(s))]
    return sorted(sites, key=lambda s: (order.get(s, len(order)), s))


def global_stacks() -> list[str]:
    return [s for s in all_stacks() if GLOBAL_MARKER in _config(stack_file(s))]


def read_stack_config(
    path: Path, placeholders: Mapping[str, str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """The config the CLI would pass: `{key: str}`, plus the keys that are secret.

    `secure:` values become `placeholders[<short key>]` (default SECRET_PLACEHOLDERS).
    """
    if not path.is_file():
        raise FileNotFoundError(f"no stack file at {path}; stacks are {sorted(p.name for p in STACKS_DIR.glob('*'))}")
    raw: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in _config(path).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            short = key.split(":", 1)[-1]
            raw[key] = (SECRET_PLACEHOLDERS if placeholders is None else placeholders).get(short, "plan-placeholder")
            secret_keys.append(key)
        elif isinstance(value, str):
            raw[key] = value
        elif isinstance(value, bool):
            raw[key] = "true" if value else "false"
        else:
            raw[key] = json.dumps(value)
    return raw, secret_keys


def with_placeholders(raw: Mapping[str, str]) -> dict[str, str]:
    """A site stack's config with every secret it does not set filled by its placeholder."""
    filled = dict(raw)
    for short, value in SECRET_PLACEHOLDERS.items():
        filled.setdefault(f"qwen-serving:{short}", value)
    return filled
