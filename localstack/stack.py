"""The whole local stack, in start order: Redis -> vLLM -> gateway x N -> Nginx -> Prometheus.

`LocalStack(config).start()` is what `make up` runs and what the end-to-end tests run. Every process is
recorded in `<root>/pids.json` as soon as it starts, so `make down` from another shell (or a crash
half-way) can stop exactly those processes and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.gateway.settings import secret_variables
from app.inference.tiny_model import PACED_MODEL, TEST_MODELS, ensure_test_model, is_built, model_dir
from localstack.files import write_private
from localstack.processes import (
    ProgressFn,
    group_members,
    port_in_use,
    process_start_time,
    rss_bytes,
    stop_group,
)
from localstack.services import (
    REPO_ROOT,
    GatewayHandle,
    NginxHandle,
    ProcessError,
    RedisHandle,
    ServiceHandle,
    VllmHandle,
    check_port,
    require_program,
    start_gateway,
    start_nginx,
    start_redis,
    start_vllm,
)
from localstack.settings import ensure_api_key, key_hash, local_settings
from stackspec.render.gateway_env import render_gateway_env
from stackspec.render.nginx import render_nginx_conf
from stackspec.settings import StackSettings

DEFAULT_ROOT = REPO_ROOT / "build" / "local"
WEB_ROOT = REPO_ROOT / "web"
PIDS_FILE = "pids.json"
ENDPOINT_FILE = "endpoint.json"

class StackError(RuntimeError):
    """The local stack cannot start; the message says what and what to do."""


@dataclass
class LocalConfig:
    """What a run of the local stack may vary; `from_env` reads PORT, MODEL, TEST_MODEL, VLLM_REPLICAS,
    LOCAL_STATE_DIR, IMAGES."""

    root: Path = DEFAULT_ROOT
    port: int = 8080
    model: Path | None = None  # real weights; default: a test model built here
    # Which test model when `model` is None: the paced one decodes at a GPU-like rate, so the chat page
    # streams as it would in production; `tiny-qwen2` is faster to start and answer where that matters.
    test_model: str = PACED_MODEL
    vllm_replicas: int = 1
    gateway_replicas: int | None = None  # default: settings.gateway.replicas
    prometheus: bool = True
    vllm_timeout: float = 600.0
    # The gateways and the edge from their images (built first, `make images`), under a dockerd of the
    # stack's own (build/docker), instead of as processes: localstack/containers.py.
    images: bool = False
    say: Callable[[str], None] = print

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalConfig:
        env = os.environ if env is None else env
        problems = []
        port, replicas = 8080, 1
        try:
            port = int(env.get("PORT", "8080"))
            if not 1024 <= port <= 65535:
                raise ValueError
        except ValueError:
            problems.append(f"PORT={env.get('PORT')!r}: give a port number between 1024 and 65535")
        try:
            replicas = int(env.get("VLLM_REPLICAS", "1"))
            if not 1 <= replicas <= 4:
                raise ValueError
        except ValueError:
            problems.append(f"VLLM_REPLICAS={env.get('VLLM_REPLICAS')!r}: give 1 to 4")
        model = Path(env["MODEL"]).expanduser().resolve() if env.get("MODEL") else None
        if model is not None and not (model / "config.json").is_file():
            problems.append(f"MODEL={env['MODEL']}: no config.json there; point it at a Hugging Face model dir")
        test_model = env.get("TEST_MODEL", PACED_MODEL)
        if test_model not in TEST_MODELS:
            problems.append(f"TEST_MODEL={test_model!r}: choose one of {', '.join(TEST_MODELS)}")
        images = env.get("IMAGES", "0")
        if images not in ("0", "1", ""):
            problems.append(f"IMAGES={images!r}: 1 runs the gateway and the edge from their images, 0 as processes")
        if problems:
            raise StackError("\n".join(problems))
        return cls(root=state_dir(env), port=port, model=model, vllm_replicas=replicas, test_model=test_model,
                   images=images == "1")


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where up writes its state and down reads it: build/local, or LOCAL_STATE_DIR (tests use their own)."""
    env = os.environ if env is None else env
    return Path(env["LOCAL_STATE_DIR"]).resolve() if env.get("LOCAL_STATE_DIR") else DEFAULT_ROOT


@dataclass
class Endpoint:
    url: str
    api_key: str
    model: str

    def as_json(self) -> dict[str, str]:
        return {"url": self.url, "api_key": self.api_key, "model": self.model}


@dataclass
class LocalStack:
    config: LocalConfig = field(default_factory=LocalConfig)
    redis: RedisHandle | None = None
    vllm: list[VllmHandle] = field(default_factory=list)
    gateways: list[GatewayHandle] = field(default_factory=list)
    nginx: NginxHandle | None = None
    monitoring: Any = None  # localstack.prometheus.LocalMonitoring: Prometheus + the Nginx/Redis exporters
    docker: Any = None  # localstack.docker.Docker, with config.images
    endpoint: Endpoint | None = None
    settings: StackSettings | None = None
    timings: dict[str, float] = field(default_factory=dict)
    owns_state: bool = False  # True once this stack wrote pids.json (so stop() may remove it)

    @property
    def root(self) -> Path:
        return self.config.root.resolve()

    @property
    def prometheus_url(self) -> str | None:
        return self.monitoring.prometheus.url if self.monitoring is not None else None

    def handles(self) -> list[Any]:
        monitoring = self.monitoring.handles() if self.monitoring is not None else []
        docker = self.docker if self.docker is not None and self.docker.process is not None else None
        found: list[Any] = [docker, self.redis, *self.vllm, *self.gateways, self.nginx, *monitoring]
        return [h for h in found if h is not None]

    # --- start -----------------------------------------------------------------------------------
    def start(self) -> Endpoint:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Endpoint:
        cfg, say = self.config, self.config.say
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        ensure_not_running(root)
        for prog in ("redis-server", "nginx"):
            require_program(prog, f"/usr/sbin/{prog}" if prog == "nginx" else None)
        check_port(cfg.port, "Nginx (the web page and API)", "PORT")

        api_key = ensure_api_key(root)
        overrides = settings_overrides(cfg)
        settings = self.settings = local_settings(api_key, overrides=overrides)
        served = settings.model.served_name

        t0 = time.monotonic()
        if cfg.model is None:
            weights = ensure_test_model_verbose(cfg.test_model, say)
        else:
            weights = cfg.model
            say(f"model: {weights} (from MODEL)")
        self.timings["model"] = time.monotonic() - t0

        t = time.monotonic()
        redis_password = _persistent_secret(root / "redis-password")
        self.redis = start_redis(root / "redis", settings=settings, password=redis_password)
        self._record()
        self.timings["redis"] = time.monotonic() - t
        say(f"redis      ready on 127.0.0.1:{self.redis.port} ({self.timings['redis']:.1f} s)")

        t = time.monotonic()
        for i in range(cfg.vllm_replicas):
            self.vllm.append(start_vllm(
                root / f"vllm-{i}", settings=settings, model_dir=weights, served_name=served,
                timeout=cfg.vllm_timeout, wait=False, name=f"vllm-{i}",
            ))
            self._record()
        for i, handle in enumerate(self.vllm):
            handle.wait_ready(_progress_printer(f"vllm-{i}", say))
            _end_progress()
            say(f"vllm-{i}     ready on 127.0.0.1:{handle.port} ({time.monotonic() - t:.1f} s)")
        self.timings["vllm"] = time.monotonic() - t

        self.start_front(settings, api_key=api_key, redis=self.redis, vllm=self.vllm)

        if cfg.prometheus:
            self._start_monitoring(redis_password, say)

        assert self.endpoint is not None
        _write_private_json(root / ENDPOINT_FILE, self.endpoint.as_json())
        self.timings["total"] = time.monotonic() - t0
        return self.endpoint

    def start_front(self, settings: StackSettings, *, api_key: str, redis: RedisHandle, vllm: list[VllmHandle]
                    ) -> Endpoint:
        """The gateways and Nginx in front of `redis` and `vllm` (this stack's, or another's: tests/images puts
        the containers in front of the session stack's): processes, or containers from the images built here
        first with `config.images`. Only what this starts is this stack's to stop."""
        cfg, say, root = self.config, self.config.say, self.root
        root.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        t = time.monotonic()
        images: dict[str, str] = {}
        if cfg.images:
            from localstack.docker import Docker
            from localstack.images import build_images

            self.docker = Docker(REPO_ROOT / "build" / "docker").start()
            self._record()
            images = {name: b.tag for name, b in build_images(self.docker, settings.images, say).items()}
            self.timings["images"] = time.monotonic() - t
            t = time.monotonic()
        env = gateway_env(settings, vllm, redis, api_key_hashes={key_hash(api_key): "local-dev"})
        if not cfg.images:  # as in a pod: the secrets are files of a private directory, not env vars
            env = secrets_as_files(env, root / "gateway-secrets")
        for i in range(settings.gateway.replicas):
            self.gateways.append(self._start_gateway(root / f"gateway-{i}", env, f"gateway-{i}", images))
            self._record()
        for gw in self.gateways:
            gw.wait_ready()
            say(f"{gw.name}  ready on 127.0.0.1:{gw.port}{' (container)' if cfg.images else ''}")
        self.timings["gateways"] = time.monotonic() - t

        t = time.monotonic()
        if cfg.images:
            from localstack.containers import start_edge_container

            conf = container_nginx_conf(settings, port=cfg.port, gateways=self.gateways)
            self.nginx = start_edge_container(self.docker, root / "nginx", image=images["edge"], conf_text=conf,
                                              port=cfg.port)
        else:
            conf = nginx_conf(settings, port=cfg.port, gateways=self.gateways, prefix=root / "nginx")
            self.nginx = start_nginx(root / "nginx", conf_text=conf, port=cfg.port, health_path="/")
        self._record()
        self.timings["nginx"] = time.monotonic() - t
        say(f"nginx      ready on 127.0.0.1:{cfg.port}{' (container)' if cfg.images else ''}")
        self.endpoint = Endpoint(f"http://127.0.0.1:{cfg.port}", api_key, settings.model.served_name)
        return self.endpoint

    def _start_gateway(self, workdir: Path, env: dict[str, str], name: str, images: dict[str, str]
                       ) -> GatewayHandle:
        if not self.config.images:
            return start_gateway(workdir, env=env, name=name, wait=False)
        from localstack.containers import start_gateway_container

        return start_gateway_container(self.docker, workdir, image=images["gateway"], env=env, name=name, wait=False)

    def _start_monitoring(self, redis_password: str, say: Callable[[str], None]) -> None:
        """Prometheus with the rendered rules, scraping vLLM, the gateways and the Nginx/Redis exporters.

        Its settings are local.yaml's with a 1 s scrape interval (`monitoring_settings`), so graphs move.
        """
        from localstack.prometheus import start_local_monitoring

        assert self.redis is not None and self.nginx is not None
        self.monitoring = start_local_monitoring(
            self.root / "monitoring",
            vllm=[h.port for h in self.vllm],
            gateways=[g.port for g in self.gateways],
            nginx_status_url=f"http://127.0.0.1:{self.config.port}/nginx_status",
            redis_port=self.redis.port,
            redis_password=redis_password,
        )
        self._record()
        say(f"prometheus ready on {self.prometheus_url}")

    # --- stop --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this stack started, newest first; forget the state file."""
        for handle in reversed(self.handles()):
            try:
                handle.stop()
            except Exception as err:  # keep stopping the others
                print(f"warning: stopping {getattr(handle, 'name', handle)}: {err}", file=sys.stderr)
        self.redis, self.nginx, self.monitoring, self.docker = None, None, None, None
        self.vllm, self.gateways = [], []
        if self.owns_state:  # never the state file of another, running stack
            (self.root / PIDS_FILE).unlink(missing_ok=True)
            self.owns_state = False

    def restart(self, handle: ServiceHandle) -> None:
        """Start one of this stack's servers again (after stop() or kill()) and record its new pid, so
        `make down` and `status` keep seeing exactly the running processes."""
        handle.restart()
        self._record()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """Every live process of the stack, workers included (each server is its own process group)."""
        return [pid for h in self.handles() if h.process.popen for pid in group_members(h.process.pid)]

    def rss_bytes(self) -> int:
        """Resident memory of the whole stack: the sum over all its processes."""
        return sum(rss_bytes(pid) for pid in self.pids())

    def dead(self) -> list[str]:
        """Names of processes that have exited on their own."""
        return [h.name for h in self.handles() if not h.process.running()]

    def _record(self) -> None:
        entries = []
        for h in self.handles():
            proc = h.process
            if proc.popen is None:
                continue
            entries.append({"name": h.name, "pid": proc.pid, "pgid": proc.pid, "start_time": proc.start_time})
        state = {"owner_pid": os.getpid(), "processes": entries}
        _write_private_json(self.root / PIDS_FILE, state)
        self.owns_state = True


def settings_overrides(cfg: LocalConfig) -> dict[str, Any]:
    """What this run changes in local.yaml: vLLM replicas (one pretend GPU each), real weights' name."""
    overrides: dict[str, Any] = {
        "inference": {"replicas": cfg.vllm_replicas},
        "gpuPool": {"hosts": [{"name": "localhost", "gpus": cfg.vllm_replicas}]},
    }
    if cfg.model is not None:  # real weights: serve them under their directory's name
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.model.name).strip("-") or "local-model"
        overrides["model"] = {"name": name, "servedName": name}
    else:
        overrides["model"] = {"name": cfg.test_model, "servedName": cfg.test_model}
    if cfg.gateway_replicas:
        overrides["gateway"] = {"replicas": cfg.gateway_replicas, "maxReplicas": cfg.gateway_replicas}
    return overrides


# --- helpers shared with `down` / `status` -----------------------------------------------------------
def read_state(root: Path) -> list[dict[str, Any]]:
    path = root / PIDS_FILE
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("processes", []))
    except (json.JSONDecodeError, AttributeError):
        return []


def alive(entry: Mapping[str, Any]) -> bool:
    """Is the recorded process still the same one (pid and kernel start time both match)?"""
    return process_start_time(int(entry["pid"])) == entry.get("start_time")


def ensure_not_running(root: Path) -> None:
    live = [e for e in read_state(root) if alive(e)]
    if live:
        names = ", ".join(f"{e['name']} (pid {e['pid']})" for e in live)
        raise StackError(f"the local stack is already running: {names}; stop it with `make down` first")
    (root / PIDS_FILE).unlink(missing_ok=True)


def stop_recorded(root: Path) -> list[dict[str, Any]]:
    """Stop exactly the recorded processes that are still the same; returns those stopped."""
    entries = read_state(root)
    # Remove the record first: the running `up` takes that as "stopped by make down", not as a crash.
    (root / PIDS_FILE).unlink(missing_ok=True)
    stopped = []
    for entry in reversed(entries):
        if alive(entry):
            stop_group(int(entry["pgid"]))
            stopped.append(entry)
    return stopped


def gateway_env(
    settings: StackSettings,
    vllm: list[VllmHandle],
    redis: RedisHandle,
    *,
    api_key_hashes: Mapping[str, str],
) -> dict[str, str]:
    backends = [f"127.0.0.1:{h.port}" for h in vllm]
    env = render_gateway_env(settings, backends_dns=None, backends=backends, redis_url=redis.url)
    # Secrets: in a cluster these come from a Kubernetes Secret; locally, from files under build/.
    env["GATEWAY_API_KEY_HASHES"] = json.dumps(dict(api_key_hashes))
    if redis.password:
        env["GATEWAY_REDIS_PASSWORD"] = redis.password
    # Local only: nothing to drain behind a load balancer, so Ctrl-C should not wait 30 s; but a short answer
    # in flight must still finish (a CPU vLLM just restarted took 3-5 s for 3 tokens on a slow 2-core
    # machine), and the grace stays under ManagedProcess.stop()'s 15 s before SIGKILL.
    env["GATEWAY_SHUTDOWN_GRACE_SECONDS"] = "10"
    env["GATEWAY_SHUTDOWN_DRAIN_SECONDS"] = "0"
    return env


def secrets_as_files(env: Mapping[str, str], directory: Path) -> dict[str, str]:
    """`env` with its secret variables moved into files of `directory` (mode 0600, the directory 0700), which
    the gateway reads as its secrets directory (pydantic-settings' secrets_dir, GATEWAY_SECRETS_DIR): what
    the Deployment's read-only Secret mount gives a pod."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    rest = dict(env)
    for name in secret_variables():
        path = directory / name
        if name in rest:
            write_private(path, rest.pop(name) + "\n")
        else:
            path.unlink(missing_ok=True)  # a secret of an earlier run must not linger
    rest["GATEWAY_SECRETS_DIR"] = str(directory.resolve())
    return rest


def nginx_conf(settings: StackSettings, *, port: int, gateways: list[GatewayHandle], prefix: Path) -> str:
    upstreams = [f"127.0.0.1:{g.port}" for g in gateways]
    return render_nginx_conf(
        settings, listen=f"127.0.0.1:{port}", gateway_upstreams=upstreams, web_root=str(WEB_ROOT),
        local_prefix=str(prefix),
    )


def container_nginx_conf(settings: StackSettings, *, port: int, gateways: list[GatewayHandle]) -> str:
    """The edge container's nginx.conf: the pod's layout (state in the emptyDir's place, logs to the
    container's stdout/stderr, the image's web root), listening where the local stack does."""
    return render_nginx_conf(settings, listen=f"127.0.0.1:{port}",
                             gateway_upstreams=[f"127.0.0.1:{g.port}" for g in gateways])


def ensure_test_model_verbose(name: str, say: Callable[[str], None]) -> Path:
    cached = model_dir(name)
    if is_built(cached, name):
        say(f"model: {name}, a random-weight test Qwen2 (cached in {cached.relative_to(REPO_ROOT)})")
        return cached
    say(f"model: building {name} (random weights, local tokenizer; once, a few seconds)...")
    t = time.monotonic()
    path = ensure_test_model(name)
    say(f"model: built in {time.monotonic() - t:.1f} s -> {path.relative_to(REPO_ROOT)}")
    return path


def _persistent_secret(path: Path) -> str:
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    value = secrets.token_hex(16)
    write_private(path, value + "\n")
    return value


def _write_private_json(path: Path, data: Any) -> None:
    write_private(path, json.dumps(data, indent=2) + "\n")


_progress_active = False


def _progress_printer(name: str, say: Callable[[str], None]) -> ProgressFn:
    """While vLLM loads: elapsed seconds and its last log line (one updating line on a terminal)."""
    tty = sys.stdout.isatty() and say is print

    def progress(elapsed: float, line: str) -> None:
        global _progress_active
        short = line.split("] ", 1)[-1][:70] if line else ""
        if tty:
            _progress_active = True
            sys.stdout.write(f"\r\033[K{name}     loading... {elapsed:4.0f} s  {short}")
            sys.stdout.flush()
        elif int(elapsed) % 5 == 0:
            say(f"{name}     loading... {elapsed:.0f} s  {short}")

    return progress


def _end_progress() -> None:
    global _progress_active
    if _progress_active:
        sys.stdout.write("\r\033[K")
        sys.stdout.flush()
        _progress_active = False


__all__ = [
    "Endpoint", "LocalConfig", "LocalStack", "ProcessError", "ServiceHandle", "StackError",
    "port_in_use", "stop_recorded",
]
