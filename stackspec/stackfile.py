"""Stack files (stacks/Pulumi.<stack>.yaml) read the way the Pulumi CLI hands them to the program.

Every value becomes a string (objects as JSON); `secure:` values cannot be decrypted offline and become
the caller's placeholders (and stay secret). Also: which stacks exist, read from stacks/ (never a list
written somewhere else).
"""

from __future__ import annotations

import hashlib
import json
import re
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
    "redisReplicationPassword": "plan-placeholder-replication-password",
    "backupAccessKeyId": "plan-placeholder",
    "backupSecretAccessKey": "plan-placeholder",
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


# `images` values that name an image (the Deployments pull them; prod-like sites need them by digest).
PINNABLE_IMAGE_KEYS = ("vllm", "pythonBase", "nginxBase", "redis", "redisExporter", "nginxExporter", "logSetup")
_IMAGE_LINE = re.compile(r"^(?P<indent>\s+)(?P<key>\w+):(?P<space>\s+)(?P<ref>[^\s#]+)(?P<rest>.*)$")


def image_refs(text: str) -> dict[str, str]:
    """The pinnable image references under `qwen-serving:images` in a stack file's text: key -> ref."""
    found: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if line.strip().startswith("qwen-serving:images:"):
            inside = True
            continue
        if inside and line.strip() and not line.startswith("    ") and not line.strip().startswith("#"):
            inside = False
        match = _IMAGE_LINE.match(line) if inside else None
        if match and match.group("key") in PINNABLE_IMAGE_KEYS:
            found[match.group("key")] = match.group("ref")
    return found


def pin_digests(text: str, digests: Mapping[str, str]) -> str:
    """Rewrite a stack file's text so each image in `digests` (ref -> sha256:...) is `ref-without-digest@digest`.

    Only the `qwen-serving:images` lines change; comments, order and every other line stay as they are.
    """
    out: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("qwen-serving:images:"):
            inside = True
        elif inside and stripped and not line.startswith("    ") and not stripped.startswith("#"):
            inside = False
        match = _IMAGE_LINE.match(line.rstrip("\n")) if inside else None
        if match and match.group("key") in PINNABLE_IMAGE_KEYS and match.group("ref") in digests:
            digest = digests[match.group("ref")]
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                raise ValueError(f"{digest!r} is not a sha256 digest")
            base = match.group("ref").split("@", 1)[0]
            newline = "\n" if line.endswith("\n") else ""
            line = (f"{match.group('indent')}{match.group('key')}:{match.group('space')}{base}@{digest}"
                    f"{match.group('rest')}{newline}")
        out.append(line)
    return "".join(out)
