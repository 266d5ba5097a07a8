"""`make plan`: render a stack offline — resource tree, manifests, strict schema validation, policy report.

    python -m infra.plan --stack prod
    python -m infra.plan --stack-file path/to/Pulumi.x.yaml [--require-secrets]

Needs no credentials and no Pulumi CLI: the real program runs under Pulumi's mocks (infra/offline.py).
Exits 1 with the settings error (every problem, each naming its key and the fix; no resource is declared),
or with the manifests that fail validation. Secret config the stack file does not carry is filled with
visible placeholders unless `--require-secrets` (then each secret the stack's features need must be there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from infra.offline import REPO, Captured, OfflineRun, manifest_of, run_stack, stack_file
from infra.plan_snapshot import from_run, write_snapshot
from infra.policy_config import policy_config
from policies.runner import evaluate
from stackspec.settings import SettingsError

PLAN_DIR = REPO / "build" / "plan"


@dataclass(frozen=True)
class ManifestCheck:
    resource: str
    kind: str
    error: str | None  # None: valid; "no-schema": a custom resource kind without a built-in schema


def check_manifest(manifest: dict[str, Any], kubernetes_version: str) -> str | None:
    """Strictly validate one manifest; returns the error text, "no-schema" for CRD kinds, or None."""
    try:
        kubernetes_validate.validate(manifest, kubernetes_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return "no-schema"
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path) or "(root)"
        return f"{where}: {err.message}"
    return None


def validate_run(run: OfflineRun) -> list[ManifestCheck]:
    version = kubernetes_version(run)
    checks = []
    for resource in sorted(run.resources, key=lambda r: (r.type, r.name)):
        manifest = manifest_of(resource) if resource.is_kubernetes else None
        if manifest is None:
            continue
        checks.append(ManifestCheck(f"{resource.type} {resource.name}", manifest["kind"],
                                    check_manifest(manifest, version)))
    return checks


def kubernetes_version(run: OfflineRun) -> str:
    # The global stack declares no Kubernetes objects; any version would do for it.
    return run.settings.kubernetes.version if run.site_settings else "1.33.0"


def describe(run: OfflineRun) -> str:
    if run.dns is not None:
        return (f"global DNS {run.dns.hostname}: active site {run.dns.active_site}, "
                f"standby {run.dns.standby_site}")
    s = run.settings
    routing = s.gateway_runtime().routing
    return (f"site {s.site.name}, role {s.site.role}\n"
            f"capacity per vLLM replica: {s.capacity.describe()}\n"
            f"{s.gateway.describe_shutdown()}\n"
            f"{s.describe_gateway_processes()}\n"
            f"replicas owned by: vLLM {'KEDA' if s.keda_scales_vllm else 'inference.replicas'}, "
            f"gateway {'the HPA' if s.hpa_scales_gateway else 'gateway.replicas'}\n"
            f"gateway routing: {routing.policy} (load factor {routing.load_factor:g}, blocks of "
            f"{routing.block_tokens} tokens), remembering {routing.cache_tokens:,} tokens of KV cache per backend")


def render_tree(resources: list[Captured]) -> str:
    """Resources as an indented tree by parent, children sorted by type then name."""
    by_parent: dict[str, list[Captured]] = {}
    urns = {r.urn for r in resources}
    for r in resources:
        by_parent.setdefault(r.parent if r.parent in urns else "", []).append(r)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for r in sorted(by_parent.get(parent, []), key=lambda r: (r.type, r.name)):
            lines.append(f"{'  ' * depth}{'└─ ' if depth else ''}{r.type}  {r.name}")
            walk(r.urn, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def write_manifests(run: OfflineRun, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(run.manifests(), sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make plan", description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--stack", default="dev", help="stack name: stacks/Pulumi.<stack>.yaml")
    group.add_argument("--stack-file", type=Path, help="any stack file")
    parser.add_argument("--require-secrets", action="store_true",
                        help="no placeholders: fail when a secret the stack needs is not in the file")
    args = parser.parse_args(argv)

    path = args.stack_file or stack_file(args.stack)
    started = time.perf_counter()
    try:
        run = run_stack(None if args.stack_file else args.stack, stack_file_path=path,
                        fill_secrets=not args.require_secrets)
        config = policy_config(run.site_settings)
    except SettingsError as err:
        print(f"plan: {path}: {err}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"plan: {err}", file=sys.stderr)
        return 1

    checks = validate_run(run)
    out = write_manifests(run, PLAN_DIR / run.stack)
    # The machine-readable plan (secrets masked) that `make plan BASE=<ref>` diffs (infra/plan_diff.py).
    write_snapshot(from_run(run, REPO), out.parent / "resources.json")

    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(f"stack {run.stack} ({shown}): {describe(run)}\n")
    print(render_tree(run.resources))
    counts = Counter(r.type for r in run.resources)
    print(f"\n{len(run.resources)} resources:")
    for type_, n in sorted(counts.items()):
        print(f"  {n:3d}  {type_}")
    if run.placeholders:
        print(f"note: secret config not in the stack file, placeholders used: {', '.join(run.placeholders)}"
              " (set each with `pulumi config set --secret <key> ...` before `pulumi up`)")

    failed = [c for c in checks if c.error not in (None, "no-schema")]
    no_schema = Counter(c.kind for c in checks if c.error == "no-schema")
    print(f"\nmanifests: {out.relative_to(REPO) if out.is_relative_to(REPO) else out} — {len(checks)} objects, "
          f"{len(checks) - len(failed) - sum(no_schema.values())} valid against Kubernetes "
          f"{kubernetes_version(run)} (strict)"
          + (f", custom resources without a built-in schema: {dict(no_schema)}" if no_schema else ""))
    for c in failed:
        print(f"INVALID {c.resource}: {c.error}", file=sys.stderr)

    config_path = out.parent / "policy-config.json"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    violations = evaluate(run.resources, config=config)
    blocking = [v for v in violations if v.blocking]
    elapsed = time.perf_counter() - started
    print(f"policies: {len(violations)} violation(s) of the qwen-serving guard rails (policies/rules.py), "
          f"{len(blocking)} mandatory; config for `pulumi preview --policy-pack policies --policy-pack-config "
          f"{config_path.relative_to(REPO) if config_path.is_relative_to(REPO) else config_path}`")
    for v in violations:
        print(f"{'VIOLATION' if v.blocking else 'ADVISORY'} {v}", file=sys.stderr)
    print(f"plan took {elapsed:.2f} s")
    return 1 if failed or blocking else 0


if __name__ == "__main__":
    sys.exit(main())
