"""Start each real server of the local stack: Redis, vLLM (CPU), the gateway, Nginx.

Each `start_*` writes its rendered config under `workdir`, starts the program on 127.0.0.1, waits until
it is healthy and returns a handle (`.port`, `.url`, `.stop()`, `.kill()`, `.restart()`). The tests use
these same functions, so what they check is what `make up` runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localstack.files import write_private
from localstack.processes import ManagedProcess, ProcessError, ProgressFn, free_port, http_ok, port_in_use
from localstack.unprivileged import LOCAL_VLLM_USER, Identity, cannot_run, closed_to, hand_over, vllm_identity
from stackspec.render.redis import REPLICATION_TLS_DIR, render_redis_conf, render_redis_secrets
from stackspec.render.vllm_args import render_vllm_args, writable_dirs_env
from stackspec.settings import StackSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PYTHON = Path(sys.executable)
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"

# The CPU run of vLLM: no CUDA graphs / torch.compile (starts in ~17 s instead of ~40 s) and a fixed
# KV-cache size instead of a GPU-memory fraction (see ../shared notes on vLLM's CPU build). 256 MiB holds
# ~43k tokens of the paced test model (6 KiB a token), ten full-length (4096) sequences.
VLLM_CPU_EXTRAS: tuple[str, ...] = (
    "--enforce-eager",
    "--kv-cache-memory-bytes", str(256 * 1024 * 1024),
    "--dtype", "bfloat16",
)


class PortTakenError(ProcessError):
    pass


def require_program(name: str, path: str | None = None) -> str:
    """Absolute path of a program, or a clear error that says to run `make setup`."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if not found:
        raise ProcessError(f"program '{name}' is missing; run `make setup` (it installs what is missing)")
    return found


def check_port(port: int, what: str, env_var: str | None = None) -> None:
    if port_in_use(port):
        hint = f"; choose another with {env_var}=<port> (e.g. `{env_var}={port + 1} make up`)" if env_var else ""
        raise PortTakenError(f"port {port} on 127.0.0.1 (for {what}) is already in use{hint}")


@dataclass
class ServiceHandle:
    """A running server: its process, port and how to check it is ready."""

    name: str
    port: int
    process: ManagedProcess
    ready: Callable[[], bool]
    ready_timeout: float = 60.0
    extra_pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, progress: ProgressFn | None = None) -> None:
        self.process.wait_ready(self.ready, timeout=self.ready_timeout, progress=progress)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def restart(self, progress: ProgressFn | None = None) -> None:
        """Start again with the same command, config and port (e.g. after kill())."""
        self.process.stop()
        self.process.start()
        self.wait_ready(progress)


@dataclass
class RedisHandle(ServiceHandle):
    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass
class VllmHandle(ServiceHandle):
    served_name: str = ""

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@dataclass
class GatewayHandle(ServiceHandle):
    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


@dataclass
class NginxHandle(ServiceHandle):
    pass


def serves_model(url: str, served_name: str) -> Callable[[], bool]:
    """Healthy when /v1/models lists `served_name`: a check by name, not just by port, so a vLLM never
    counts as up because some other server answers on its port."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                models = json.load(resp).get("data", [])
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return any(isinstance(m, dict) and m.get("id") == served_name for m in models)

    return check


def _redis_ping(port: int, password: str | None) -> Callable[[], bool]:
    import redis

    def ping() -> bool:
        try:
            client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    return ping


def start_redis(
    workdir: Path,
    *,
    settings: StackSettings,
    port: int | None = None,
    password: str | None = None,
    env_var: str | None = None,
    replication_password: str | None = None,
    tls_dir: Path | None = None,
    tls_port: int | None = None,
) -> RedisHandle:
    """Redis on 127.0.0.1 with AOF under `workdir/data`; same workdir again = same data. On a DR pair's site
    (redis.replication) also the mutual-TLS port `tls_port` with the certificates in `tls_dir`
    (localstack/tls.py) and the replication user; the secrets reach it through a private included file."""
    workdir = workdir.resolve()
    program = require_program("redis-server")
    port = port or free_port()
    check_port(port, "Redis", env_var)
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    include = None
    secrets_text = render_redis_secrets(settings, password=password, replication_password=replication_password)
    if secrets_text:
        include = workdir / "redis-secret.conf"
        write_private(include, secrets_text)
    conf = workdir / "redis.conf"
    conf.write_text(render_redis_conf(
        settings, port=port, bind="127.0.0.1", data_dir=str(data_dir),
        password_file_include=str(include) if include else None,
        tls_dir=str(tls_dir) if tls_dir else REPLICATION_TLS_DIR, tls_port=tls_port,
    ))
    proc = ManagedProcess("redis", [program, str(conf)], workdir / "redis.log", cwd=workdir).start()
    handle = RedisHandle("redis", port, proc, _redis_ping(port, password), 30.0, password=password)
    handle.wait_ready()
    return handle


def short_tmp_dir(workdir: Path) -> Path:
    """A temp dir for vLLM whose path is short: it puts ZeroMQ unix sockets (`<TMPDIR>/<uuid>`, limited to
    107 bytes) there. build/tmp/<hash of workdir>, or the system temp dir if the checkout is too deep."""
    tag = hashlib.sha256(str(workdir).encode()).hexdigest()[:10]
    tmp = REPO_ROOT / "build" / "tmp" / tag
    if len(str(tmp)) + 40 > 100:
        tmp = Path(tempfile.gettempdir()) / f"qs-{tag}"
    return tmp


# vLLM inspects the model's class in a separate process (a second import of torch and vLLM: under a test run's
# load, a quarter of a boot) unless VLLM_CACHE_ROOT/modelinfos holds the answer, keyed by a hash of the class's
# source. Every local vLLM shares one such directory: only the first boot on a checkout pays for it.
MODEL_INFO_CACHE = REPO_ROOT / "build" / "vllm-modelinfos"


def share_model_info_cache(vllm_cache_root: Path, identity: Identity | None) -> None:
    """Point `vllm_cache_root`/modelinfos at the shared directory (vLLM writes its files atomically)."""
    hand_over(MODEL_INFO_CACHE, identity)
    hand_over(vllm_cache_root, identity)
    link = vllm_cache_root / "modelinfos"
    if link.is_symlink() and link.resolve() == MODEL_INFO_CACHE.resolve():
        return
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    link.unlink(missing_ok=True)
    link.symlink_to(MODEL_INFO_CACHE, target_is_directory=True)
    if identity is not None:
        os.chown(link, identity.uid, identity.gid, follow_symlinks=False)


def vllm_env(workdir: Path, identity: Identity | None = None) -> dict[str, str]:
    """vLLM writes caches and temp files under these (the cluster's list, vllm_env in the contract); keep them
    all inside `workdir`, in directories `identity` owns: the only places it can write."""
    home, cache = workdir / "home", workdir / "cache"
    tmp = short_tmp_dir(workdir)
    for d in (home, cache, tmp):
        hand_over(d, identity)
    writable = writable_dirs_env(str(home), str(cache), str(cache / "huggingface"))
    share_model_info_cache(Path(writable["VLLM_CACHE_ROOT"]), identity)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **writable,
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # vLLM's CPU build pins its compute thread to core 0 by default ("auto", the last core reserved), so
        # every vLLM on this machine would share one core while the other idles; unpinned, the kernel spreads
        # them. One compute thread each, as the pinned default had (spinning OpenMP threads would fight).
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def vllm_command(settings: StackSettings, *, model: str, port: int, served_name: str) -> list[str]:
    """The local vLLM command line: the cluster's rendered arguments plus the CPU extras."""
    args = render_vllm_args(settings, model=model, host="127.0.0.1", port=port, extra=VLLM_CPU_EXTRAS)
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", *args]
    if "--served-model-name" not in args:
        cmd += ["--served-model-name", served_name]
    return cmd


def vllm_process(name: str, cmd: Sequence[str], workdir: Path) -> ManagedProcess:
    """A vLLM command as a managed process: never root (localstack/unprivileged.py), writing only inside
    `workdir`, logging to workdir/vllm.log."""
    identity = vllm_identity()
    if identity is not None and cannot_run(identity, str(VLLM_PYTHON)):
        identity = None  # the machine does not allow it yet (see cannot_run): the claim's tests fail, not the stack
    if identity is not None and (closed := closed_to(identity, workdir)) is not None:
        raise ProcessError(f"{name} runs as {LOCAL_VLLM_USER}, who may not enter {closed}: give it a work "
                           "directory it can reach (under build/)")
    return ManagedProcess(
        name, cmd, workdir / "vllm.log", env=vllm_env(workdir, identity), cwd=workdir,
        uid=identity.uid if identity else None, gid=identity.gid if identity else None,
    )


def start_vllm(
    workdir: Path,
    *,
    settings: StackSettings,
    model_dir: Path,
    served_name: str | None = None,
    port: int | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 300.0,
    env_var: str | None = None,
    wait: bool = True,
    name: str = "vllm",
) -> VllmHandle:
    """One vLLM (CPU build) replica serving `model_dir`; healthy when /v1/models lists its served name."""
    if not VLLM_PYTHON.exists():
        raise ProcessError(f"{VLLM_PYTHON} is missing; run `make setup` (installs the CPU build of vLLM)")
    workdir = workdir.resolve()
    served_name = served_name or settings.model.served_name
    port = port or free_port()
    check_port(port, "vLLM", env_var)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = vllm_command(settings, model=str(model_dir), port=port, served_name=served_name)
    proc = vllm_process(name, cmd, workdir).start()
    url = f"http://127.0.0.1:{port}"
    handle = VllmHandle(
        name, port, proc, serves_model(url, served_name), timeout, served_name=served_name,
    )
    if wait:
        handle.wait_ready(progress)
    return handle


def start_gateway(
    workdir: Path,
    *,
    env: Mapping[str, str],
    port: int | None = None,
    name: str = "gateway",
    env_var: str | None = None,
    timeout: float = 60.0,
    wait: bool = True,
) -> GatewayHandle:
    """One gateway replica, started as its image starts it (`python -m app.gateway`: uvicorn that drains
    on SIGTERM); ready when /readyz answers 2xx."""
    workdir = workdir.resolve()
    port = port or free_port()
    check_port(port, name, env_var)
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(workdir),
        **env,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
    }
    cmd = [str(PROJECT_PYTHON), "-m", "app.gateway"]
    proc = ManagedProcess(name, cmd, workdir / f"{name}.log", env=full_env, cwd=REPO_ROOT).start()
    return gateway_handle(name, port, proc, timeout=timeout, wait=wait)


def gateway_handle(name: str, port: int, proc: ManagedProcess, *, timeout: float, wait: bool) -> GatewayHandle:
    """A started gateway (process or container) on `port`: ready when /readyz answers 2xx."""
    url = f"http://127.0.0.1:{port}"
    handle = GatewayHandle(name, port, proc, lambda: http_ok(f"{url}/readyz"), timeout)
    if wait:
        handle.wait_ready()
    return handle


def start_nginx(
    workdir: Path,
    *,
    conf_text: str,
    port: int,
    health_path: str = "/",
    env_var: str | None = "PORT",
    timeout: float = 20.0,
) -> NginxHandle:
    """Nginx on a rendered config, prefix `workdir` (no root, no system paths); checked with `nginx -t` first."""
    import subprocess

    program = require_program("nginx", "/usr/sbin/nginx")
    workdir = workdir.resolve()
    check_port(port, "Nginx (the web page and API)", env_var)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(conf_text)
    base: Sequence[str] = [program, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "logs" / "error.log")]
    test = subprocess.run([*base, "-t"], capture_output=True, text=True, check=False)
    if test.returncode != 0:
        raise ProcessError(f"nginx -t rejected {conf}:\n{test.stderr}")
    # Foreground, so the process group is ours to stop (the rendered config may already say so).
    argv = base if "daemon off;" in conf_text else [*base, "-g", "daemon off;"]
    proc = ManagedProcess("nginx", argv, workdir / "nginx.log", cwd=workdir).start()
    handle = NginxHandle("nginx", port, proc, lambda: http_ok(f"http://127.0.0.1:{port}{health_path}"), timeout)
    handle.wait_ready()
    return handle
