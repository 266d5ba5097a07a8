"""The images we build (gateway, edge) with pulumi-docker, and the ones we pin (vLLM by digest).

Deployments use `repo_digest` (registry/name@sha256:...) so a pod runs exactly what was built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker as docker

from stackspec.settings import StackSettings

REPO = Path(__file__).resolve().parents[2]
GATEWAY_DOCKERFILE = "app/gateway/Dockerfile"
EDGE_DOCKERFILE = "web/Dockerfile"
GATEWAY_INPUTS = ("app", "pyproject.toml", "constraints.txt", GATEWAY_DOCKERFILE)
EDGE_INPUTS = ("web",)


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


@dataclass
class ImagesArgs:
    settings: StackSettings


class Images(pulumi.ComponentResource):
    def __init__(self, name: str, args: ImagesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("qwen-serving:images:Images", name, None, opts)
        s = args.settings
        registry = s.images.registry.rstrip("/")
        child = pulumi.ResourceOptions(parent=self)
        self.gateway_image = docker.Image(
            "gateway-image",
            image_name=f"{registry}/gateway:{content_tag(GATEWAY_INPUTS)}",
            build=docker.DockerBuildArgs(
                context=str(REPO),
                dockerfile=str(REPO / GATEWAY_DOCKERFILE),
                platform="linux/amd64",
                args={"PYTHON_BASE": s.images.python_base},
            ),
            skip_push=not s.images.push,
            opts=child,
        )
        self.edge_image = docker.Image(
            "edge-image",
            image_name=f"{registry}/edge:{content_tag(EDGE_INPUTS)}",
            build=docker.DockerBuildArgs(
                context=str(REPO),
                dockerfile=str(REPO / EDGE_DOCKERFILE),
                platform="linux/amd64",
                args={"NGINX_BASE": s.images.nginx_base},
            ),
            skip_push=not s.images.push,
            opts=child,
        )
        self.gateway_ref = _ref(self.gateway_image)
        self.edge_ref = _ref(self.edge_image)
        self.vllm_ref: str = s.images.vllm  # pulled as pinned in settings (a digest on prod-like sites)
        self.register_outputs({"gateway": self.gateway_ref, "edge": self.edge_ref, "vllm": self.vllm_ref})
