"""The images we build (gateway, edge; the backup image where `redis.backup` is set) with pulumi-docker, and the
ones we pin (vLLM by digest).

Deployments use `repo_digest` (registry/name@sha256:...) so a pod runs exactly what was built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker as docker

from infra.components import labels as kube
from stackspec.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]
GATEWAY_DOCKERFILE = "app/gateway/Dockerfile"
EDGE_DOCKERFILE = "web/Dockerfile"
GATEWAY_INPUTS = ("app", "pyproject.toml", "constraints.txt", GATEWAY_DOCKERFILE)
EDGE_INPUTS = ("web",)
BACKUP_DOCKERFILE = "dr/Dockerfile"
BACKUP_INPUTS = ("dr/__init__.py", "dr/backup.py", "dr/requirements.txt", BACKUP_DOCKERFILE)


@dataclass(frozen=True)
class ImageBuild:
    """One image we build: its Dockerfile, the files whose content tags it, and its base image build-arg."""

    name: str
    dockerfile: str
    inputs: tuple[str, ...]
    base_arg: str  # the Dockerfile's ARG that takes the base image
    base_setting: str  # the images.* setting it comes from


BUILDS: tuple[ImageBuild, ...] = (
    ImageBuild("gateway", GATEWAY_DOCKERFILE, GATEWAY_INPUTS, "PYTHON_BASE", "python_base"),
    ImageBuild("edge", EDGE_DOCKERFILE, EDGE_INPUTS, "NGINX_BASE", "nginx_base"),
)
BACKUP_BUILD = ImageBuild("backup", BACKUP_DOCKERFILE, BACKUP_INPUTS, "PYTHON_BASE", "python_base")


def builds(settings: StackSettings) -> tuple[ImageBuild, ...]:
    """The images this stack builds: the backup image only where the Redis tier runs backups."""
    return (*BUILDS, BACKUP_BUILD) if settings.redis.backup is not None else BUILDS


def content_tag(paths: Iterable[str], root: Path = REPO) -> str:
    """A tag that changes exactly when the files that go into the image change."""
    digest = hashlib.sha256()
    for rel in sorted(paths):
        base = root / rel
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for file in files:
            if "__pycache__" in file.parts or not file.exists():
                continue
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def _ref(image: docker.Image) -> pulumi.Output[str]:
    # Without a push there is no registry digest; fall back to the (content-tagged) name.
    return pulumi.Output.all(image.repo_digest, image.image_name).apply(lambda v: v[0] or v[1])


ImagesArgs = kube.SiteArgs  # the settings are all it takes


class Images(pulumi.ComponentResource):
    def __init__(self, name: str, args: ImagesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:images:Images", name, None, opts)
        s = args.settings
        registry = s.images.registry.rstrip("/")
        child = pulumi.ResourceOptions(parent=self)
        built = {
            b.name: docker.Image(
                f"{b.name}-image",
                image_name=f"{registry}/{b.name}:{content_tag(b.inputs)}",
                build=docker.DockerBuildArgs(
                    context=str(REPO),
                    dockerfile=str(REPO / b.dockerfile),
                    platform="linux/amd64",
                    args={b.base_arg: getattr(s.images, b.base_setting)},
                ),
                skip_push=not s.images.push,
                opts=child,
            )
            for b in builds(s)
        }
        self.gateway_image, self.edge_image = built["gateway"], built["edge"]
        self.gateway_ref = _ref(self.gateway_image)
        self.edge_ref = _ref(self.edge_image)
        self.backup_ref = _ref(built["backup"]) if "backup" in built else None
        self.vllm_ref: str = s.images.vllm  # pulled as pinned in settings (a digest on prod-like sites)
        self.register_outputs({"gateway": self.gateway_ref, "edge": self.edge_ref, "vllm": self.vllm_ref,
                               "backup": self.backup_ref})
