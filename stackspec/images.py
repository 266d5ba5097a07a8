"""The images we build (gateway, edge; the backup image where `redis.backup` is set): one definition of
each build — context, Dockerfile, build args, the pinned wheels it installs offline — and of the user each
runs as. The Pulumi `Images` component (infra/components/images.py) hands these to pulumi-docker; `make images`
(localstack/images.py) hands the very same ones to `docker build`, all three.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stackspec.settings import ImageSettings, StackSettings
from stackspec.stackfile import REPO

# Who the containers run as: the pods' securityContext (runAsUser/runAsGroup) and `docker run --user`.
# Every one is >= 10000: above any UID a node's /etc/passwd hands out, so a container escape lands on no
# host account (checkov CKV_K8S_40).
GATEWAY_UID = 10001  # created by app/gateway/Dockerfile
NGINX_UID = 10101  # web/Dockerfile's USER; nginx needs no passwd entry (its html is world-readable)
BACKUP_UID = 10001  # created by dr/Dockerfile
REDIS_UID = 10999  # the official Redis image runs as any UID; fsGroup makes its data volume writable
VLLM_UID = 10002  # the official vLLM image runs as any UID once $HOME and its caches are writable

# Each Python image's wheels, downloaded on the host (`pip download`, localstack/images.py) into the build
# context and installed offline (`pip install --no-index --find-links`): no index is reached during a build.
GATEWAY_WHEELS = "build/wheels/gateway"
GATEWAY_REQUIREMENTS = "app/gateway/requirements.txt"
BACKUP_WHEELS = "build/wheels/backup"
BACKUP_REQUIREMENTS = "dr/requirements.txt"
PLATFORM = "linux/amd64"


@dataclass(frozen=True)
class ImageBuild:
    """One image we build: its Dockerfile, the files whose content tags it, its base image build-arg."""

    name: str
    dockerfile: str
    inputs: tuple[str, ...]
    base_arg: str  # the Dockerfile's ARG that takes the base image
    base_setting: str  # the images.* setting it comes from
    uid: int
    fixed_args: Mapping[str, str] = field(default_factory=dict)
    requirements: str | None = None  # the pins whose wheels go into fixed_args["WHEELS"] before a build

    @property
    def wheels(self) -> str | None:
        return self.fixed_args.get("WHEELS")


BUILDS: tuple[ImageBuild, ...] = (
    ImageBuild(
        "gateway", "app/gateway/Dockerfile", ("app", "pyproject.toml", "constraints.txt", "app/gateway/Dockerfile"),
        "PYTHON_BASE", "python_base", GATEWAY_UID, {"WHEELS": GATEWAY_WHEELS}, GATEWAY_REQUIREMENTS,
    ),
    ImageBuild("edge", "web/Dockerfile", ("web",), "NGINX_BASE", "nginx_base", NGINX_UID),
)
# Built only for stacks that run the Redis backup CronJob (infra/components/redis.py).
BACKUP_BUILD = ImageBuild(
    "backup", "dr/Dockerfile", ("dr/__init__.py", "dr/backup.py", "dr/requirements.txt", "dr/Dockerfile"),
    "PYTHON_BASE", "python_base", BACKUP_UID, {"WHEELS": BACKUP_WHEELS}, BACKUP_REQUIREMENTS,
)
# What `make images` builds here: every image any stack builds (the backup image too, so the CronJob's image
# is built and checked before a `pulumi up` needs it).
BUILD_BY_NAME = {b.name: b for b in (*BUILDS, BACKUP_BUILD)}


def builds(settings: StackSettings) -> tuple[ImageBuild, ...]:
    """The images a stack builds: the backup image only where the Redis tier runs backups."""
    return (*BUILDS, BACKUP_BUILD) if settings.redis.backup is not None else BUILDS


@dataclass(frozen=True)
class BuildDefinition:
    """What `docker build` gets: context, Dockerfile, build args and platform."""

    name: str
    context: Path
    dockerfile: Path
    args: dict[str, str]
    platform: str = PLATFORM


def build_definition(build: ImageBuild, images: ImageSettings, *, base: str | None = None,
                     root: Path = REPO) -> BuildDefinition:
    """The build of `build` for a stack's image settings; `base` replaces the pinned base (a locally made
    one where the pinned base cannot be pulled) and changes nothing else."""
    args = {build.base_arg: base or getattr(images, build.base_setting), **build.fixed_args}
    return BuildDefinition(build.name, root, root / build.dockerfile, args)


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
