"""The offline plan as data: every resource the program declares, its inputs, secrets masked.

    python -m infra.plan_snapshot --stack prod --out build/plan/prod/resources.json

`make plan` writes the same file (build/plan/<stack>/resources.json). `make plan BASE=<ref>` runs this file
inside a checkout of the ref (cwd = that tree, so `infra.offline` and the stack files are the ref's own) and
diffs the two snapshots (infra/plan_diff.py). It therefore imports nothing but `infra.offline.run_stack` and
`is_secret`, which every version of the program has.

A resource's key is its URN without the stack and project (`<parent types>$<type>::<name>`): stable across
trees and unique. Secret values are never written: each becomes `SECRET_MASK`. Absolute paths of the tree
(Docker build contexts) are written relative to it, so two checkouts compare equal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SECRET_MASK = "[secret]"
FORMAT = 1


def resource_key(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<types>::<name>` -> `<types>::<name>`."""
    parts = urn.split("::", 2)
    return parts[2] if len(parts) == 3 else urn


def _clean(value: Any, root: str, is_secret: Any) -> Any:
    if is_secret(value):
        return SECRET_MASK
    if isinstance(value, dict):
        return {k: _clean(v, root, is_secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, root, is_secret) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and root in value:
        return value.replace(root + "/", "").replace(root, ".")
    return value


def snapshot(stack: str | None, stack_file: Path | None = None) -> dict[str, Any]:
    from infra.offline import run_stack

    return from_run(run_stack(stack, stack_file_path=stack_file))


def from_run(run: Any, root: Path | None = None) -> dict[str, Any]:
    """An `infra.offline.OfflineRun` as data (`root`: the tree it was rendered from; default: the cwd)."""
    from infra.offline import is_secret

    top = str((root or Path.cwd()).resolve())
    resources = {}
    for r in run.resources:
        resources[resource_key(r.urn)] = {
            "type": r.type,
            "name": r.name,
            "parent": resource_key(r.parent) if r.parent else "",
            "inputs": _clean(r.inputs, top, is_secret),
        }
    return {"format": FORMAT, "stack": run.stack, "resources": dict(sorted(resources.items()))}


def write_snapshot(data: dict[str, Any], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plan_snapshot", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    write_snapshot(snapshot(args.stack), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
