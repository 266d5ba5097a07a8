"""`make plan STACK=<s> BASE=<ref>`: what the work tree would change against a git ref, offline.

    python -m infra.plan_diff --stack prod --base origin/main

The ref is extracted (`git archive`) into build/plan-base/<sha>/ and the stack rendered there with that
tree's own program and stack files (infra/plan_snapshot.py run with cwd = that tree, under Pulumi's mocks);
the work tree is rendered the same way; then, per resource: added, removed, or changed with every changed
field as a dotted path, old -> new. Secrets are masked in both snapshots before they are compared (a changed
secret is not visible here; `pulumi preview` shows it as a secret change). No credentials, no Pulumi CLI.

`diff_snapshots` and `render` are pure; the rest runs git and two subprocesses.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.plan_snapshot import SECRET_MASK

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT_SCRIPT = Path(__file__).resolve().parent / "plan_snapshot.py"
MISSING = object()  # a field absent on one side
SHORT = 100  # strings up to this length (and single-line) are printed whole


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any  # MISSING when the field was added
    new: Any  # MISSING when the field was removed


@dataclass
class ResourceChange:
    key: str
    type: str
    name: str
    action: str  # "add" | "remove" | "change"
    fields: list[FieldChange] = field(default_factory=list)


IDENTITY_KEYS = ("name", "alert", "record")  # containers, env, ports, volumes, rule groups; alerting rules


def _identity(item: Any) -> str | None:
    if isinstance(item, dict):
        for key in IDENTITY_KEYS:
            if isinstance(item.get(key), str):
                return f"[{key}={item[key]}]"
    return None


def _list_keys(items: list[Any]) -> list[str] | None:
    """Elements keyed by their name (or alert/record name) when every element has a distinct one."""
    keys = [_identity(item) for item in items]
    if items and all(keys) and len(set(keys)) == len(keys):
        return [k for k in keys if k]
    return None


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Leaves as (dotted path, value); lists of named mappings keyed by name, other lists by index."""
    if isinstance(value, dict) and value:
        for key in sorted(value):
            yield from flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value:
        keys = _list_keys(value) or [f"[{i}]" for i in range(len(value))]
        for key, item in zip(keys, value, strict=True):
            yield from flatten(item, f"{prefix}{key}")
    else:
        yield prefix, value


def diff_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[FieldChange]:
    before, after = dict(flatten(old)), dict(flatten(new))
    changes = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path, MISSING), after.get(path, MISSING)
        if a != b:
            changes.append(FieldChange(path, a, b))
    return changes


def diff_snapshots(base: dict[str, Any], head: dict[str, Any]) -> list[ResourceChange]:
    """Per resource (keyed by URN without stack/project): added, removed, or changed fields."""
    old, new = base.get("resources", {}), head.get("resources", {})
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old:
            r = new[key]
            changes.append(ResourceChange(key, r["type"], r["name"], "add"))
        elif key not in new:
            r = old[key]
            changes.append(ResourceChange(key, r["type"], r["name"], "remove"))
        else:
            fields = diff_inputs(old[key]["inputs"], new[key]["inputs"])
            if old[key].get("parent") != new[key].get("parent"):
                fields.insert(0, FieldChange("(parent)", old[key].get("parent"), new[key].get("parent")))
            if fields:
                r = new[key]
                changes.append(ResourceChange(key, r["type"], r["name"], "change", fields))
    return changes


def _show(value: Any) -> str:
    if value is MISSING:
        return "(none)"
    if value == SECRET_MASK:
        return SECRET_MASK
    return json.dumps(value, ensure_ascii=False)


def _field_lines(change: FieldChange) -> list[str]:
    a, b = change.old, change.new
    long_text = any(isinstance(v, str) and ("\n" in v or len(v) > SHORT) for v in (a, b))
    if not long_text or a is MISSING or b is MISSING:
        text_a, text_b = _show(a), _show(b)
        if len(text_a) > 4 * SHORT:
            text_a = text_a[:4 * SHORT] + "…"
        if len(text_b) > 4 * SHORT:
            text_b = text_b[:4 * SHORT] + "…"
        return [f"    {change.path}: {text_a} → {text_b}"]
    # Rendered config files (nginx.conf, rules, dashboards): the changed lines only.
    lines = [f"    {change.path}: (text)"]
    old_lines = a.splitlines() if isinstance(a, str) else [_show(a)]
    new_lines = b.splitlines() if isinstance(b, str) else [_show(b)]
    for line in difflib.unified_diff(old_lines, new_lines, lineterm="", n=0):
        if line.startswith(("---", "+++")):
            continue
        lines.append(f"      {line}")
    return lines


SYMBOL = {"add": "+", "remove": "-", "change": "~"}


def render(stack: str, base_label: str, changes: list[ResourceChange]) -> str:
    out = io.StringIO()
    counts = {action: sum(c.action == action for c in changes) for action in SYMBOL}
    out.write(f"stack {stack}: against {base_label}: {counts['add']} to add, {counts['change']} to change, "
              f"{counts['remove']} to remove\n")
    for change in changes:
        out.write(f"{SYMBOL[change.action]} {change.type}  {change.name}")
        out.write(f"  ({len(change.fields)} field{'s' if len(change.fields) != 1 else ''})\n"
                  if change.fields else "\n")
        for fc in change.fields:
            out.write("\n".join(_field_lines(fc)) + "\n")
    if not changes:
        out.write("no changes\n")
    return out.getvalue()


# --- running it: git and two renders ---------------------------------------------------------------------


class PlanDiffError(Exception):
    pass


def _git(*args: str, cwd: Path = REPO) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PlanDiffError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def checkout_ref(ref: str, repo: Path = REPO) -> tuple[str, Path]:
    """The ref's tree under build/plan-base/<sha>/ (extracted once per commit; commits do not change)."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=repo)
    target = repo / "build" / "plan-base" / sha
    if not (target / ".complete").exists():
        archive = subprocess.run(["git", "archive", "--format=tar", sha], cwd=repo, capture_output=True,
                                 check=False)
        if archive.returncode != 0:
            raise PlanDiffError(f"git archive {sha}: {archive.stderr.decode().strip()}")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(target, filter="data")
        (target / ".complete").write_text(sha + "\n")
    return sha, target


# Runs plan_snapshot.py from this tree with the *other* tree first on sys.path (cwd, via -c), so the program,
# components and stack files are that tree's. A stack the tree does not have is an empty snapshot.
_RUNNER = (
    "import runpy, sys\n"
    "stack, out = sys.argv[1], sys.argv[2]\n"
    "sys.argv = ['plan_snapshot', '--stack', stack, '--out', out]\n"
    "try:\n"
    "    runpy.run_path({script!r}, run_name='__main__')\n"
    "except FileNotFoundError as err:\n"
    "    print(f'no such stack here: {{err}}', file=sys.stderr)\n"
    "    sys.exit(3)\n"
)
NO_SUCH_STACK = 3


def _start_snapshot(tree: Path, stack: str, out: Path) -> subprocess.Popen[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    code = _RUNNER.format(script=str(SNAPSHOT_SCRIPT))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen([sys.executable, "-c", code, stack, str(out)], cwd=tree, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _collect(proc: subprocess.Popen[str], what: str, out: Path, timeout: float) -> dict[str, Any]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise PlanDiffError(f"rendering {what} took over {timeout:g} s") from None
    if proc.returncode == NO_SUCH_STACK:
        return {"resources": {}}
    if proc.returncode != 0:
        raise PlanDiffError(f"rendering {what} failed:\n{stderr.strip()}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def plan_diff(stack: str, base: str, *, repo: Path = REPO, timeout: float = 300) -> tuple[str, list[ResourceChange]]:
    """Render `stack` at `base` and in the work tree `repo` (both at once); returns (base label, changes)."""
    sha, base_tree = checkout_ref(base, repo)
    out_dir = repo / "build" / "plan" / stack
    base_out, head_out = out_dir / f"resources.base-{sha[:12]}.json", out_dir / "resources.json"
    procs = [_start_snapshot(base_tree, stack, base_out), _start_snapshot(repo, stack, head_out)]
    try:
        old = _collect(procs[0], f"{stack} at {base} ({sha[:12]})", base_out, timeout)
        new = _collect(procs[1], f"{stack} in the work tree", head_out, timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    if not old["resources"] and not new["resources"]:
        raise PlanDiffError(f"stack {stack!r} exists neither at {base} nor in the work tree")
    return f"{base} ({sha[:12]})", diff_snapshots(old, new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make plan BASE=<ref>", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--base", required=True, help="a git ref: origin/main, HEAD~1, a sha")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        label, changes = plan_diff(args.stack, args.base)
    except PlanDiffError as err:
        print(f"plan diff: {err}", file=sys.stderr)
        return 1
    print(render(args.stack, label, changes), end="")
    print(f"plan diff took {time.perf_counter() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
