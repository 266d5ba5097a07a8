"""The images we build (gateway, edge; the backup image where `redis.backup` is set) with pulumi-docker, and the
ones we pin (vLLM by digest).

What each build is (context, Dockerfile, args) is defined once in stackspec/images.py; `make images` builds
the same definitions with Docker on this machine. Deployments use `repo_digest` (registry/name@sha256:...)
so a pod runs exactly what was built.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from infra.components import labels as kube
from stackspec.images import build_definition, builds, content_tag


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
        built = {}
        for b in builds(s):
            definition = build_definition(b, s.images)
            built[b.name] = docker.Image(
                f"{b.name}-image",
                image_name=f"{registry}/{b.name}:{content_tag(b.inputs)}",
                build=docker.DockerBuildArgs(
                    context=str(definition.context),
                    dockerfile=str(definition.dockerfile),
                    platform=definition.platform,
                    args=definition.args,
                ),
                skip_push=not s.images.push,
                opts=child,
            )
        self.gateway_image, self.edge_image = built["gateway"], built["edge"]
        self.gateway_ref = _ref(self.gateway_image)
        self.edge_ref = _ref(self.edge_image)
        self.backup_ref = _ref(built["backup"]) if "backup" in built else None
        self.vllm_ref: str = s.images.vllm  # pulled as pinned in settings (a digest on prod-like sites)
        self.register_outputs({"gateway": self.gateway_ref, "edge": self.edge_ref, "vllm": self.vllm_ref,
                               "backup": self.backup_ref})
