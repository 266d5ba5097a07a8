"""Run the real Pulumi program offline, under Pulumi's own mocks, and capture every resource.

The Pulumi CLI is not needed: the stack file is read the way the CLI would hand it to the program
(every value a string, objects as JSON), the program's `main()` runs against a monitor that records
each registration (type, name, parent, inputs in wire form), and the cloud/cluster answers are
simulated by `QwenMocks`. Used by `make plan` and by the program/artifact/policy tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from stackspec.dns import DnsSettings, is_global_config
from stackspec.settings import PROJECT, SECRET_KEYS, StackSettings, settings_from_config
from stackspec.stackfile import (
    REPO,
    SECRET_PLACEHOLDERS,
    STACKS_DIR,
    read_stack_config,
    stack_file,
    stack_name,
    with_placeholders,
)

__all__ = ["REPO", "SECRET_PLACEHOLDERS", "STACKS_DIR", "read_stack_config", "stack_file"]

# The wire marker Pulumi uses for secret values (see notes/pulumi-offline.md).
SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG) == SECRET_VALUE


@dataclass(frozen=True)
class Captured:
    """One registered resource as the engine would see it."""

    type: str
    name: str
    inputs: dict[str, Any]
    parent: str
    urn: str
    custom: bool
    ignore_changes: tuple[str, ...] = ()  # fields `pulumi up` leaves alone (e.g. replicas an autoscaler owns)
    dependencies: tuple[str, ...] = ()  # URNs of depends_on (and of resources whose outputs its inputs use)

    @property
    def props(self) -> dict[str, Any]:
        """The inputs as plain values (secrets unwrapped): what a policy sees."""
        props: dict[str, Any] = unwrap_secrets(self.inputs)
        return props

    @property
    def is_kubernetes(self) -> bool:
        return self.type.startswith("kubernetes:") and self.custom


@dataclass
class OfflineRun:
    stack: str
    resources: list[Captured]
    outputs: dict[str, Any]
    placeholders: list[str] = field(default_factory=list)
    site_settings: StackSettings | None = None
    dns: DnsSettings | None = None  # set for the global (DNS) stack instead of site_settings

    @property
    def settings(self) -> StackSettings:
        if self.site_settings is None:
            raise TypeError(f"{self.stack} is the global DNS stack: read .dns, not .settings")
        return self.site_settings

    def of_type(self, type_: str) -> list[Captured]:
        return sorted((r for r in self.resources if r.type == type_), key=lambda r: r.name)

    def one(self, type_: str, name: str) -> Captured:
        found = [r for r in self.resources if r.type == type_ and r.name == name]
        if len(found) != 1:
            names = [r.name for r in self.of_type(type_)]
            raise LookupError(f"expected one {type_} named {name!r}; have {names}")
        return found[0]

    def children_of(self, parent: Captured) -> list[Captured]:
        return sorted((r for r in self.resources if r.parent == parent.urn), key=lambda r: (r.type, r.name))

    def manifests(self) -> list[dict[str, Any]]:
        ordered = sorted((r for r in self.resources if r.is_kubernetes), key=lambda r: (r.type, r.name))
        return [m for m in map(manifest_of, ordered) if m is not None]


def unwrap_secrets(value: Any) -> Any:
    if is_secret(value):
        return unwrap_secrets(value.get("value"))
    if isinstance(value, dict):
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Kubernetes resources that are not manifests of their own (Helm releases, patches are partial).
_NOT_A_MANIFEST = ("kubernetes:helm.sh/", "kubernetes:yaml/")


def manifest_of(resource: Captured) -> dict[str, Any] | None:
    """Rebuild the Kubernetes object from a resource's captured inputs."""
    if resource.type.startswith(_NOT_A_MANIFEST) or resource.type.endswith("Patch"):
        return None
    _, group_version, kind = resource.type.split(":")
    group, _, version = group_version.rpartition("/")
    api_version = version if group in ("core", "") else f"{group}/{version}"
    body = {k: v for k, v in unwrap_secrets(resource.inputs).items() if k not in ("apiVersion", "kind")}
    # The provider auto-names resources without metadata.name; the mock names them after the resource.
    body["metadata"] = {"name": resource.name, **(body.get("metadata") or {})}
    return {"apiVersion": api_version, "kind": kind, **body}


class QwenMocks(pulumi_mocks.Mocks):
    """What the providers would answer: echo inputs, plus the outputs the program reads."""

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = dict(args.inputs)
        if args.typ.startswith("kubernetes:"):
            meta = dict(state.get("metadata") or {})
            meta.setdefault("name", args.name)
            state["metadata"] = meta
        if args.typ == "kubernetes:helm.sh/v3:Release":
            state["status"] = {"name": args.name, "namespace": state.get("namespace", ""), "status": "deployed"}
        if args.typ in ("docker:index/image:Image", "docker-build:index:Image"):
            image = str(state.get("imageName") or (state.get("tags") or [args.name])[0])
            digest = "sha256:" + hashlib.sha256(image.encode()).hexdigest()
            repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
            state.update(imageName=image, repoDigest=f"{repo}@{digest}", ref=f"{repo}@{digest}", digest=digest)
        if args.typ == "pulumi:pulumi:StackReference":
            state["outputs"] = site_outputs(str(state.get("name") or args.name))
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = "offline-" + hashlib.sha256(args.name.encode()).hexdigest()[:24]
        return f"{args.name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "kubernetes:helm:template":
            return {"result": []}, None
        return {}, None


def site_outputs(stack_name: str) -> dict[str, Any]:
    """What a site stack's outputs would be, for StackReferences from the global stack (org/project/stack)."""
    from infra.program import site_exports

    raw, _ = read_stack_config(stack_file(stack_name.rsplit("/", 1)[-1]))
    return site_exports(settings_from_config(with_placeholders(raw)))


class CapturingMonitor(pulumi_mocks.MockMonitor):
    """A mock monitor that also records parent and raw inputs of every registration."""

    def __init__(self, mocks: pulumi_mocks.Mocks):
        super().__init__(mocks)
        self.captured: list[Captured] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.captured.append(Captured(
                type=request.type,
                name=request.name,
                inputs=rpc.deserialize_properties(request.object, keep_unknowns=True),
                parent=request.parent,
                urn=response.urn,
                custom=bool(request.custom),
                ignore_changes=tuple(request.ignoreChanges),
                dependencies=tuple(request.dependencies),
            ))
        return response


def run_stack(
    stack: str | None = None,
    *,
    stack_file_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    fill_secrets: bool = True,
) -> OfflineRun:
    """Run `infra.program.main()` for one stack under mocks and return what it declared.

    `overrides` replaces whole config values (`{"qwen-serving:inference": {...}}`). Secret keys the
    stack does not set are filled with visible placeholders unless `fill_secrets` is False.
    Raises SettingsError (before any resource is declared) for invalid settings.
    """
    from infra import program  # late import: the program module reads the runtime config

    path = stack_file_path or stack_file(stack or "dev")
    name = stack or stack_name(path)
    raw, secret_keys = read_stack_config(path)
    for key, value in (overrides or {}).items():
        raw[key] = value if isinstance(value, str) else json.dumps(value)
    placeholders: list[str] = []
    if fill_secrets and not is_global_config(raw):
        for short in SECRET_KEYS:
            full = f"{PROJECT}:{short}"
            if full not in raw and short in SECRET_PLACEHOLDERS:
                raw[full] = SECRET_PLACEHOLDERS[short]
                secret_keys.append(full)
                placeholders.append(full)

    # Pulumi's runtime asks for this thread's event loop; a library that ran a loop of its own here before us
    # (Playwright's sync API in the same test process) may have left the thread with none.
    _ensure_event_loop()
    settings.ROOT.set(None)
    set_all_config(raw, secret_keys)
    mocks = QwenMocks()
    monitor = CapturingMonitor(mocks)
    pulumi_mocks.set_mocks(mocks, project=PROJECT, stack=name, preview=False, monitor=monitor)
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()

    _sync_await(run_pulumi_func(program.main))
    outputs = _resolve_outputs()
    parsed = program.read_settings()
    return OfflineRun(
        stack=name,
        resources=list(monitor.captured),
        outputs=outputs,
        placeholders=placeholders,
        site_settings=parsed if isinstance(parsed, StackSettings) else None,
        dns=parsed if isinstance(parsed, DnsSettings) else None,
    )


def _resolve_outputs() -> dict[str, Any]:
    root = settings.ROOT.get()
    exported = getattr(root, "outputs", None) or {}
    resolved: dict[str, Any] = {}
    for key, value in exported.items():
        resolved[key] = _sync_await(pulumi.Output.from_input(value).future(with_unknowns=True))
    return resolved
