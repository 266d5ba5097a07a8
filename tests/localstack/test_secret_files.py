"""`make up` keeps its secrets as the cluster does (issue 22): files of mode 0600 in the run directory, read by
the processes, never their environment. The gateway authenticates a key whose hash is only in its secrets
file and reaches Redis with the password only in its file; Redis reads requirepass from its included file."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx

from app.gateway.settings import secret_variables
from localstack.processes import free_port
from localstack.services import VllmHandle, start_gateway, start_redis
from localstack.settings import key_hash, local_settings
from localstack.stack import gateway_env, secrets_as_files
from tests.waiting import wait_until

KEY = "sk-local-secret-files-test"
PASSWORD = "redis-password-in-a-file-only"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_as_files_moves_every_secret_out_of_the_environment(workdir: Path) -> None:
    env = {"GATEWAY_API_KEY_HASHES": '{"ab": "x"}', "GATEWAY_REDIS_PASSWORD": "pw", "GATEWAY_MODEL": "m"}
    stale = workdir / "secrets" / "GATEWAY_REDIS_PASSWORD"
    stale.parent.mkdir()
    stale.write_text("from an earlier run")
    moved = secrets_as_files({k: v for k, v in env.items() if k != "GATEWAY_REDIS_PASSWORD"}, workdir / "secrets")
    assert moved == {"GATEWAY_MODEL": "m", "GATEWAY_SECRETS_DIR": str((workdir / "secrets").resolve())}
    assert mode(workdir / "secrets") == 0o700
    assert (workdir / "secrets" / "GATEWAY_API_KEY_HASHES").read_text() == '{"ab": "x"}\n'
    assert mode(workdir / "secrets" / "GATEWAY_API_KEY_HASHES") == 0o600
    assert not stale.exists()  # no password of an earlier run lingers where the gateway would read it


def test_the_gateway_and_redis_read_their_secrets_from_private_files(workdir: Path) -> None:
    settings = local_settings(KEY)
    redis = start_redis(workdir / "redis", settings=settings, password=PASSWORD)
    try:
        include = workdir / "redis" / "redis-secret.conf"
        assert mode(include) == 0o600 and PASSWORD in include.read_text()
        assert PASSWORD not in " ".join(redis.process.argv)

        # No vLLM here: authentication and the Redis link are what is checked (a free port as the backend).
        nothing_listens = cast(VllmHandle, SimpleNamespace(port=free_port()))
        env = gateway_env(settings, [nothing_listens], redis, api_key_hashes={key_hash(KEY): "files"})
        env = secrets_as_files(env, workdir / "gateway-secrets")
        assert not set(secret_variables()) & set(env)
        assert KEY not in str(env) and key_hash(KEY) not in str(env) and PASSWORD not in str(env)
        for name in secret_variables():
            assert mode(workdir / "gateway-secrets" / name) == 0o600

        gateway = start_gateway(workdir / "gateway", env=env, wait=False)
        try:
            assert PASSWORD not in (Path("/proc") / str(gateway.process.pid) / "environ").read_text(errors="replace")
            ready = f"{gateway.url}/readyz"
            # The Redis password came from its file: Redis answers (with a wrong or no password it would be down).
            wait_until(lambda: _redis_state(ready) == "up", "the gateway reaches Redis with the file's password")
            models = f"{gateway.url}/v1/models"
            assert httpx.get(models, headers={"Authorization": "Bearer sk-not-the-key"}, timeout=10).status_code == 401
            answer = httpx.get(models, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
            assert answer.status_code != 401, answer.text  # the key's hash exists only in the secrets file
        finally:
            gateway.stop()
    finally:
        redis.stop()


def _redis_state(url: str) -> str | None:
    try:
        return str(httpx.get(url, timeout=5).json().get("redis"))
    except (httpx.HTTPError, ValueError):
        return None


