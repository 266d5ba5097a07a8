"""The gateway and the edge run from their images (`make up IMAGES=1`, tests/images): each container with
the pod's security context, applied by Docker — the UID the manifests declare (stackspec/images.py), a
read-only root filesystem with tmpfs where the pod has an emptyDir, every capability dropped, no privilege
escalation — on the host's network (127.0.0.1, like the rest of the local stack). The edge's nginx.conf is the
rendered pod layout, mounted read-only where the ConfigMap is; the gateway's secrets come in through the
environment (as from the Kubernetes Secret), never through the image or the command line.

Each container is a `docker run` in the foreground under a ManagedProcess (logs, readiness, `make down`);
stop/kill also remove the container, so nothing outlives its handle.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localstack.docker import DOCKER, Docker
from localstack.processes import ManagedProcess, free_port, http_ok
from localstack.services import GatewayHandle, NginxHandle, check_port, gateway_handle
from stackspec.images import GATEWAY_UID, NGINX_UID
from stackspec.render.nginx import K8S_CONF_DIR, K8S_STATE_DIR, NGINX_COMMAND

# The pod's securityContext (infra/components/labels.py restricted_container/restricted_pod), as Docker says it.
RESTRICTED = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


@dataclass
class ContainerProcess(ManagedProcess):
    """A ManagedProcess whose program is `docker run --name <container>`; stop and kill reach the container."""

    docker: Docker | None = None
    container: str = ""

    def _remove(self) -> None:
        if self.docker is not None and self.container:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.docker.run(["rm", "--force", self.container], check=False, timeout=60)

    def start(self) -> ManagedProcess:
        self._remove()  # a container left by a crash under the same name
        return super().start()

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)  # SIGTERM to `docker run`, which passes it to the container
        self._remove()

    def kill(self) -> None:
        if self.docker is not None and self.container:
            self.docker.run(["kill", self.container], check=False, timeout=60)
        super().kill()
        self._remove()


def docker_run_argv(container: str, image: str, *, uid: int, tmpfs: Sequence[str], env_names: Sequence[str] = (),
                    mounts: Sequence[tuple[Path, str]] = (), command: Sequence[str] = ()) -> list[str]:
    argv = [DOCKER, "run", "--rm", "--name", container, "--network", "host", "--user", f"{uid}:{uid}", *RESTRICTED]
    for path in tmpfs:
        argv += ["--tmpfs", f"{path}:rw,nosuid,nodev,mode=1777"]
    for source, target in mounts:
        argv += ["--volume", f"{source}:{target}:ro"]
    for name in env_names:
        argv += ["--env", name]  # the value comes from docker's own environment: not on any command line
    return [*argv, image, *command]


def start_gateway_container(
    docker: Docker, workdir: Path, *, image: str, env: Mapping[str, str], port: int | None = None,
    name: str = "gateway", timeout: float = 60.0, wait: bool = True,
) -> GatewayHandle:
    """One gateway replica from its image; ready when /readyz answers 2xx."""
    workdir = workdir.resolve()
    port = port or free_port()
    check_port(port, name)
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {**env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
    container = f"qs-{name}-{port}"
    argv = docker_run_argv(container, image, uid=GATEWAY_UID, tmpfs=["/tmp"], env_names=sorted(full_env))
    proc = ContainerProcess(name, argv, workdir / f"{name}.log", env=docker.env(full_env), cwd=workdir,
                            docker=docker, container=container).start()
    return gateway_handle(name, port, proc, timeout=timeout, wait=wait)


def start_edge_container(
    docker: Docker, workdir: Path, *, image: str, conf_text: str, port: int, health_path: str = "/",
    timeout: float = 30.0,
) -> NginxHandle:
    """The edge from its image, on the pod-layout nginx.conf mounted read-only at the ConfigMap's path."""
    workdir = workdir.resolve()
    check_port(port, "the edge (the web page and API)", "PORT")
    conf_dir = workdir / "config"  # stands for the ConfigMap volume
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "nginx.conf").write_text(conf_text)
    container = f"qs-edge-{port}"
    argv = docker_run_argv(container, image, uid=NGINX_UID, tmpfs=[K8S_STATE_DIR], mounts=[(conf_dir, K8S_CONF_DIR)],
                           command=NGINX_COMMAND)
    proc = ContainerProcess("nginx", argv, workdir / "nginx.log", env=docker.env(), cwd=workdir, docker=docker,
                            container=container).start()
    handle = NginxHandle("nginx", port, proc, lambda: http_ok(f"http://127.0.0.1:{port}{health_path}"), timeout)
    handle.wait_ready()
    return handle
