"""Real servers for the gateway tests, started once per package through the local stack's own code.

- vLLM (CPU build): A and B serve the fast test model (`tiny-qwen2`: routing, auth, limits, sessions only
  need answers, quickly); P serves the paced model (`paced-qwen2`, tens of tokens/s like a GPU) for the
  tests that act while vLLM is still generating: kill mid-stream, disconnect cancels, drain on shutdown.
- Redis: one shared instance (tests that stop Redis start their own).
- A JWKS server: the test's stand-in for the company's OIDC provider (a tiny local HTTP server).
- Gateways: real `python -m app.gateway` subprocesses, made by `start_gw(**env)`; all stopped at the end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.inference.tiny_model import FAST_MODEL, PACED_MODEL, ensure_test_model
from localstack.processes import ManagedProcess, free_port, http_ok
from localstack.services import (
    PROJECT_PYTHON,
    REPO_ROOT,
    GatewayHandle,
    RedisHandle,
    VllmHandle,
    start_redis,
    start_vllm,
)
from localstack.settings import local_settings
from stackspec.settings import StackSettings
from tests.waiting import metric

BUILD = REPO_ROOT / "build" / "test-gateway"
MODEL = "tiny-qwen2"  # the name every backend serves under (the paced one too), as one Deployment would
KEYS = {"alice": "sk-test-alice-0123456789", "bob": "sk-test-bob-0123456789", "carol": "sk-test-carol-01234567"}
ISSUER, AUDIENCE = "https://login.example.internal", "qwen-serving"


def key_hashes() -> dict[str, str]:
    return {hashlib.sha256(k.encode()).hexdigest(): name for name, k in KEYS.items()}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="package")
def stack_settings() -> StackSettings:
    # Every backend serves under one name, as the replicas of one Deployment would.
    return local_settings(KEYS["alice"], overrides={"model": {"name": MODEL, "servedName": MODEL}})


@pytest.fixture(scope="package")
def build_dir() -> Path:
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    return BUILD


@dataclass
class Fleet:
    a: VllmHandle  # fast model
    b: VllmHandle  # fast model
    paced_backend: VllmHandle  # paced model; see paced()

    def paced(self) -> VllmHandle:
        """The paced backend, running: a test that killed it (failover) leaves the restart to its next user."""
        if not self.paced_backend.process.running():
            self.paced_backend.restart()
        return self.paced_backend


@pytest.fixture(scope="package")
def fleet(build_dir: Path, stack_settings: StackSettings) -> Iterator[Fleet]:
    models = {name: ensure_test_model(name) for name in (FAST_MODEL, PACED_MODEL)}
    started: list[VllmHandle] = []

    def start(name: str, model: str) -> VllmHandle:
        handle = start_vllm(build_dir / f"vllm-{name}", settings=stack_settings, model_dir=models[model],
                            served_name=MODEL, wait=False, name=f"vllm-{name}")
        started.append(handle)
        return handle

    try:
        handles = [start("a", FAST_MODEL), start("b", FAST_MODEL), start("p", PACED_MODEL)]
        # All boot together, before any test: a vLLM booting in the background (CPU-heavy) would slow
        # whatever test runs next to it.
        with ThreadPoolExecutor(len(handles)) as pool:
            list(pool.map(lambda h: h.wait_ready(), handles))
        yield Fleet(*handles)
    finally:
        for handle in started:
            handle.stop()


@pytest.fixture(scope="package")
def redis_server(build_dir: Path, stack_settings: StackSettings) -> Iterator[RedisHandle]:
    handle = start_redis(build_dir / "redis", settings=stack_settings, password="test-redis-password")
    yield handle
    handle.stop()


def send_json(handler: BaseHTTPRequestHandler, document: Any) -> None:
    body = json.dumps(document).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class QuietHandler(BaseHTTPRequestHandler):
    """A stand-in server's handler (odd backends, an identity provider) that keeps the test output clean."""

    def log_message(self, *args: Any) -> None:
        pass


class ModelListing(QuietHandler):
    """Lists the served model on GET, as vLLM's /v1/models does: the gateway's probes find it healthy."""

    def do_GET(self) -> None:
        send_json(self, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """Run `handler` on a free loopback port in its own thread; `.shutdown()` ends it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve_json(answer: Callable[[], Any]) -> ThreadingHTTPServer:
    """A local HTTP server answering every GET with `answer()` as JSON."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            send_json(self, answer())

    return serve(Handler)


class JwksServer:
    """Serves the current JWKS; `rotate()` adds a new signing key (the old one stays published). Clearing
    `answering` makes it hang (a slow identity provider) until it is set again; `asked` counts requests."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.fetches = self.asked = 0
        self.answering = threading.Event()
        self.answering.set()
        self.rotate()
        self.server = serve_json(self._answer)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    def _answer(self) -> dict[str, Any]:
        self.asked += 1
        self.answering.wait(timeout=60)
        self.fetches += 1
        return self.jwks()

    def rotate(self) -> str:
        kid = f"k{len(self.keys) + 1}"
        self.keys.append((kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return kid

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys:
            numbers = key.public_key().public_numbers()
            out.append({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": _b64(numbers.n), "e": _b64(numbers.e)})
        return {"keys": out}

    def token(self, *, kid: str | None = None, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        kid = kid or self.keys[0][0]
        signing = key or dict(self.keys)[kid]
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(payload, signing, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


@pytest.fixture(scope="package")
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


@dataclass
class Gateway:
    handle: GatewayHandle
    env: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.handle.url

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=60, **kw)

    def log(self) -> str:
        return self.handle.process.log_path.read_text(errors="replace")

    def wait_backends_healthy(self, count: int, timeout: float = 30.0) -> None:
        """Ready means one healthy backend; routing tests need the gateway to have probed all of them."""
        deadline = time.monotonic() + timeout
        while True:
            backends = httpx.get(f"{self.url}/readyz", timeout=5).json().get("backends", {})
            if sum(1 for b in backends.values() if b["healthy"]) >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway sees {backends}, not {count} healthy backends")
            time.sleep(0.1)


StartGateway = Callable[..., Gateway]


def gateway_process(workdir: Path, env: dict[str, str], name: str) -> GatewayHandle:
    """`python -m app.gateway` (the image's command: drains on SIGTERM) as a managed process."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    full_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "TMPDIR": str(workdir),
                **env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
    proc = ManagedProcess(name, [str(PROJECT_PYTHON), "-m", "app.gateway"], workdir / f"{name}.log",
                          env=full_env, cwd=REPO_ROOT)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    return GatewayHandle(name, port, proc, lambda: http_ok(f"{url}/readyz"), 30.0)


@pytest.fixture(scope="package")
def base_env(fleet: Fleet, redis_server: RedisHandle, jwks: JwksServer) -> dict[str, str]:
    return {
        "GATEWAY_BACKENDS": f"127.0.0.1:{fleet.a.port},127.0.0.1:{fleet.b.port}",
        "GATEWAY_MODEL": MODEL,
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_REDIS_PASSWORD": redis_server.password or "",
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_API_KEY_HASHES": json.dumps(key_hashes()),
        "GATEWAY_OIDC_ISSUER": ISSUER,
        "GATEWAY_OIDC_AUDIENCE": AUDIENCE,
        "GATEWAY_OIDC_JWKS_URL": jwks.url,
        "GATEWAY_OIDC_JWKS_MIN_REFRESH_SECONDS": "0",
        "GATEWAY_RATE_LIMIT_RPM": "100000",
        "GATEWAY_RATE_LIMIT_CONCURRENT": "1000",
        "GATEWAY_SESSION_MAX_PER_IDENTITY": "100000",  # tests that check the quotas set their own
        "GATEWAY_HEALTH_INTERVAL_SECONDS": "0.5",
        # Production's 0.5 s per Redis call is shorter than a stall of this 2-core machine under three workers,
        # a cold mypy and the browsers (one GET /v1/sessions got 503 after a session_ttl call took 0.88 s).
        # The tests that are about Redis deadlines set their own, on a RedisGuard or a gateway of their own.
        "GATEWAY_REDIS_TIMEOUT_SECONDS": "5",
        "GATEWAY_FIRST_TOKEN_TIMEOUT": "20",
        "GATEWAY_IDLE_TIMEOUT": "10",
        "GATEWAY_TOTAL_TIMEOUT": "60",
        "GATEWAY_MAX_TOKENS_CAP": "4000",  # vLLM here: max_model_len 4096
        "GATEWAY_SHUTDOWN_DRAIN_SECONDS": "0",
        "GATEWAY_SHUTDOWN_GRACE_SECONDS": "5",
        # The tests of affinity, spreading and failover pin requests with session ids and count on the fewest
        # in flight for the rest: the `session` policy. test_prefix_routing.py starts gateways of the default
        # (`prefix`) policy itself.
        "GATEWAY_ROUTING": '{"policy": "session"}',
    }


class GatewayStarter:
    """Starts gateways (`python -m app.gateway`) on the package's servers; `stop_all()` stops what it started."""

    _names = iter(range(1, 100_000))  # one counter for every starter: each gateway its own directory

    def __init__(self, build_dir: Path, base_env: dict[str, str]) -> None:
        self.build_dir, self.base_env = build_dir, base_env
        self.running: list[GatewayHandle] = []

    def __call__(self, *, expect_ready: bool = True, **overrides: str) -> Gateway:
        env = {**self.base_env, **{f"GATEWAY_{k.upper()}": v for k, v in overrides.items()}}
        name = f"gateway-{next(self._names)}"
        handle = gateway_process(self.build_dir / name, env, name)
        self.running.append(handle)
        if expect_ready:
            handle.wait_ready()
        else:  # alive is enough (e.g. no backend will ever be healthy)
            handle.process.wait_ready(lambda: http_ok(f"{handle.url}/healthz"), timeout=30)
        return Gateway(handle, env)

    def stop_all(self) -> None:
        for handle in self.running:
            handle.stop()


@pytest.fixture
def start_gw(build_dir: Path, base_env: dict[str, str]) -> Iterator[StartGateway]:
    """Gateways of one test, stopped when it ends: a gateway left running keeps probing the vLLMs (and holding
    their connections) while later tests, the paced ones above all, wait on those same vLLMs."""
    starter = GatewayStarter(build_dir, base_env)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="module")
def start_module_gw(build_dir: Path, base_env: dict[str, str]) -> Iterator[StartGateway]:
    """`start_gw` for a module's shared gateways (module-scoped fixtures): stopped when the module ends."""
    starter = GatewayStarter(build_dir, base_env)
    yield starter
    starter.stop_all()


@pytest.fixture(scope="package")
def gw(build_dir: Path, base_env: dict[str, str]) -> Iterator[Gateway]:
    """The main gateway, shared by the package: backends A and B, shared Redis, API keys and OIDC."""
    starter = GatewayStarter(build_dir, base_env)
    gateway = starter()
    gateway.wait_backends_healthy(2)
    yield gateway
    starter.stop_all()


def vllm_metric(handle: VllmHandle, name: str, **labels: str) -> float:
    """Sum of a vLLM metric's samples (`vllm:num_requests_running`, `vllm:request_success_total`, ...)."""
    return metric(handle.url, name, **labels)


async def refuses_new_connections(url: str) -> bool:
    """A new connection to `url` is refused: the gateway's listener has closed (the drain is over)."""
    try:
        async with httpx.AsyncClient(base_url=url) as fresh:
            await fresh.get("/healthz")
    except httpx.ConnectError:
        return True
    return False


def assert_whole_stream(received: str, completion_tokens: int) -> None:
    """A streamed answer that ended as it should: every token, the usage, `[DONE]`, no error event."""
    events = [e.removeprefix("data: ") for e in received.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    assert not any('"error"' in e for e in events)
    usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
    assert usage and usage[-1]["completion_tokens"] == completion_tokens  # the whole answer, not a cut


def chat_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0, **extra}


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung host): only a timeout gets past it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()
