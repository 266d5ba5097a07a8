"""`make images`: the gateway, edge and backup images built with Docker on this machine, offline, from exactly
the build definitions the Pulumi `Images` component declares (stackspec/images.py).

- Each Python image's wheels are downloaded on the host (`pip download` of its requirements: the gateway's
  app/gateway/requirements.txt, the backup image's dr/requirements.txt) into the build context
  (build/wheels/<image>) and installed in the image with `--no-index --find-links`.
- Each base is the pinned one (images.pythonBase / images.nginxBase) when Docker has it or can pull it;
  where it cannot (Docker Hub is not reachable here), a base made locally from Debian bookworm with
  `debootstrap --variant=minbase` from the mirror apt uses, imported with `docker import`:
  `python` (python3, python3-venv, python-is-python3: Debian's 3.11.2) for the gateway and `nginx`
  (Debian's nginx 1.22) for the edge — two bases, so each image carries only what it runs.
- Caches: the base tarballs (the debootstrap tree, minus apt's caches) in the machine's cache, outside the
  checkout (`$QWEN_SERVING_CACHE/bases`, default ~/.cache/qwen-serving/bases: a fresh clone or `make clean`
  does not pay the ≈ 80 s of debootstrap again), and build/wheels/<image>, each with a stamp of what made it;
  the images themselves stay in build/docker's data root.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from localstack.docker import Docker
from localstack.processes import ProcessError
from localstack.services import REPO_ROOT, require_program
from stackspec.images import (
    BUILD_BY_NAME,
    GATEWAY_REQUIREMENTS,
    GATEWAY_WHEELS,
    BuildDefinition,
    build_definition,
    content_tag,
)
from stackspec.settings import ImageSettings

BASES_DIR = Path(os.environ.get("QWEN_SERVING_CACHE", Path.home() / ".cache" / "qwen-serving")) / "bases"
SUITE = "bookworm"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
IMAGE_PREFIX = "qwen-serving"


@dataclass(frozen=True)
class LocalBase:
    """A base made here with debootstrap, standing in for the pinned base of one images.* setting."""

    name: str
    packages: tuple[str, ...]

    @property
    def image(self) -> str:
        return f"{IMAGE_PREFIX}/{self.name}-base:{SUITE}-{self.stamp()[:12]}"

    def stamp(self) -> str:
        return hashlib.sha256(f"{SUITE} minbase {' '.join(self.packages)}".encode()).hexdigest()


LOCAL_BASES = {
    "python_base": LocalBase("python", ("python3", "python3-venv", "python-is-python3")),
    "nginx_base": LocalBase("nginx", ("nginx",)),
}


@dataclass
class Built:
    name: str
    tag: str
    base: str
    base_source: str  # "pinned" or "made here (debootstrap)"
    seconds: float
    size_bytes: int


Say = Callable[[str], None]


def debian_mirror(sources: Iterable[Path] = APT_SOURCES) -> str:
    """The Debian mirror apt uses here (deb822 `.sources` or one-line `sources.list`), for `SUITE`'s main."""
    files: list[Path] = []
    for path in sources:
        files += sorted(path.glob("*.sources")) + sorted(path.glob("*.list")) if path.is_dir() else [path]
    for file in files:
        if not file.is_file():
            continue
        text = file.read_text(errors="replace")
        if file.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+" + SUITE + r"\s+.*\bmain\b", line)
                if m:
                    return m.group(1)
    raise ProcessError(f"no Debian {SUITE} mirror in /etc/apt/sources.list(.d); debootstrap needs one")


def ensure_base_tarball(base: LocalBase, say: Say) -> Path:
    """BASES_DIR/<name>.tar: a minbase Debian tree with the base's packages (made once per machine)."""
    BASES_DIR.mkdir(parents=True, exist_ok=True)
    tar, stamp = BASES_DIR / f"{base.name}.tar", BASES_DIR / f"{base.name}.stamp"
    if tar.is_file() and stamp.is_file() and stamp.read_text().strip() == base.stamp():
        return tar
    require_program("debootstrap", "/usr/sbin/debootstrap")
    tree = BASES_DIR / f"{base.name}-root"
    _remove_tree(tree)
    mirror = debian_mirror()
    say(f"base {base.name}: debootstrap --variant=minbase --include={','.join(base.packages)} {SUITE} ({mirror}), "
        "once...")
    t = time.monotonic()
    proc = subprocess.run(
        ["/usr/sbin/debootstrap", "--variant=minbase", f"--include={','.join(base.packages)}", SUITE, str(tree),
         mirror], capture_output=True, text=True, check=False, timeout=900,
    )
    if proc.returncode != 0:
        log = tree / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace")[-2000:] if log.is_file() else proc.stderr[-2000:]
        _remove_tree(tree)
        raise ProcessError(f"debootstrap of the {base.name} base failed:\n{detail}")
    partial = tar.with_suffix(".tar.partial")
    # apt's downloaded packages and lists are not part of a base image.
    subprocess.run(["tar", "-C", str(tree), "--exclude=./var/cache/apt/*", "--exclude=./var/lib/apt/lists/*",
                    "-cf", str(partial), "."], check=True)
    partial.replace(tar)
    stamp.write_text(base.stamp() + "\n")
    _remove_tree(tree)
    say(f"base {base.name}: made in {time.monotonic() - t:.0f} s -> {tar} "
        f"({tar.stat().st_size / 2**20:.0f} MiB)")
    return tar


def _remove_tree(tree: Path) -> None:
    """A debootstrap tree may still have /proc or /sys mounted if it was interrupted: unmount first."""
    if not tree.exists():
        return
    for sub in ("proc", "sys", "dev/pts"):
        mount = tree / sub
        if mount.is_dir() and mount.is_mount():
            subprocess.run(["umount", "-l", str(mount)], check=False)
    shutil.rmtree(tree, ignore_errors=True)


def ensure_local_base(docker: Docker, base: LocalBase, say: Say) -> str:
    if _has_image(docker, base.image):
        return base.image
    tar = ensure_base_tarball(base, say)
    docker.run(["import", "-", base.image], stdin=tar)
    return base.image


def _has_image(docker: Docker, ref: str) -> bool:
    return docker.run(["image", "inspect", ref], check=False, timeout=30).returncode == 0


def choose_base(docker: Docker, setting: str, pinned: str, say: Say) -> tuple[str, str]:
    """The pinned base if Docker has it or can pull it; otherwise the one made here. Says which."""
    if _has_image(docker, pinned):
        return pinned, "pinned"
    try:
        pull = docker.run(["pull", pinned], check=False, timeout=300)
        if pull.returncode == 0:
            return pinned, "pinned"
        reason = (pull.stderr.strip().splitlines() or ["pull failed"])[-1][:160]
    except subprocess.TimeoutExpired:
        reason = "no answer from the registry in 300 s"
    local = ensure_local_base(docker, LOCAL_BASES[setting], say)
    say(f"base: {pinned} cannot be pulled ({reason}); using {local}, made here (Debian {SUITE}, debootstrap)")
    return local, f"made here (Debian {SUITE}, debootstrap)"


def ensure_wheels(say: Say, python: Path = Path(sys.executable), *, requirements_file: str = GATEWAY_REQUIREMENTS,
                  wheels_dir: str = GATEWAY_WHEELS) -> Path:
    """build/wheels/<image>: every pinned wheel of an image, downloaded once per requirements file."""
    requirements = REPO_ROOT / requirements_file
    wheels = REPO_ROOT / wheels_dir
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = wheels / ".stamp"
    if stamp.is_file() and stamp.read_text().strip() == want:
        return wheels
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    t = time.monotonic()
    proc = subprocess.run(
        [str(python), "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "-r", str(requirements), "-d", str(wheels)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    if proc.returncode != 0:
        raise ProcessError(f"pip download of {requirements_file} failed:\n{proc.stderr[-2000:]}")
    stamp.write_text(want + "\n")
    n = len(list(wheels.glob("*.whl")))
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    say(f"wheels: {n} downloaded in {time.monotonic() - t:.0f} s ({size / 2**20:.1f} MiB) -> {wheels_dir}")
    return wheels


def image_tag(name: str) -> str:
    """The local tag of an image: the same content tag the Pulumi component gives it."""
    return f"{IMAGE_PREFIX}/{name}:{content_tag(BUILD_BY_NAME[name].inputs)}"


def docker_build_argv(definition: BuildDefinition, tag: str) -> list[str]:
    """`docker build` arguments for a build definition: its context, Dockerfile, args and platform, nothing
    else but the tag and `--network none` (the build reaches no network: offline by construction)."""
    argv = ["build", "--network", "none", "--platform", definition.platform, "-f", str(definition.dockerfile),
            "-t", tag]
    for key, value in sorted(definition.args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    return [*argv, str(definition.context)]


def build_images(docker: Docker, images: ImageSettings, say: Say, names: Iterable[str] | None = None
                 ) -> dict[str, Built]:
    """Build the images (all of BUILD_BY_NAME by default) with Docker; each one's wheels first."""
    wanted = [b for b in BUILD_BY_NAME.values() if names is None or b.name in set(names)]
    for b in wanted:
        if b.wheels and b.requirements:
            ensure_wheels(say, requirements_file=b.requirements, wheels_dir=b.wheels)
    out = {}
    for b in wanted:
        base, source = choose_base(docker, b.base_setting, getattr(images, b.base_setting), say)
        definition = build_definition(b, images, base=None if source == "pinned" else base)
        tag = image_tag(b.name)
        t = time.monotonic()
        docker.run(docker_build_argv(definition, tag), timeout=1200)
        seconds = time.monotonic() - t
        size = int(docker.run(["image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip())
        out[b.name] = Built(b.name, tag, base, source, seconds, size)
        say(f"image {tag}: built in {seconds:.1f} s, {size / 1e6:.0f} MB, base {base} ({source})")
    return out
