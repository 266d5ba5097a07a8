"""Pure parts of the gateway, no servers: history trimming, routing, SSE framing, settings errors."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.gateway.backends.pool import Backend
from app.gateway.backends.routing import choose_backend
from app.gateway.errors import ApiError
from app.gateway.proxy import StreamAccount, sse_events
from app.gateway.sessions.history import approx_tokens, compose
from app.gateway.sessions.store import validate_session_id
from app.gateway.settings import GatewaySettings, GatewaySettingsError, load_settings


def turn(i: int, size: int = 40) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"q{i} " + "x" * size}, {"role": "assistant", "content": f"a{i}"}]


def test_compose_keeps_system_and_newest_turns_within_budget() -> None:
    history = [m for i in range(10) for m in turn(i)]
    new = [{"role": "user", "content": "now"}]
    out = compose(stored_system="SYS", history=history, request_messages=new, budget=60)
    assert out[0] == {"role": "system", "content": "SYS"}
    assert out[-1] == new[0]
    kept = out[1:-1]
    assert kept and kept == history[-len(kept):]  # the newest, in order
    assert kept[0]["role"] == "user"  # never starts with a dangling assistant reply
    assert sum(approx_tokens(m) for m in out) <= 60


def test_compose_request_system_wins_and_empty_budget_drops_history() -> None:
    out = compose(stored_system="OLD", history=turn(1), request_messages=[
        {"role": "system", "content": "NEW"}, {"role": "user", "content": "hi"}], budget=1)
    assert out == [{"role": "system", "content": "NEW"}, {"role": "user", "content": "hi"}]


def test_session_affinity_is_stable_and_moves_only_when_its_backend_goes() -> None:
    backends = [Backend(f"10.0.0.{i}:8000", healthy=True) for i in range(4)]
    picks = {f"s-{n}": choose_backend(backends, session_id=f"s-{n}") for n in range(200)}
    assert len({b.address for b in picks.values() if b}) == 4  # spread over all
    gone = backends[1]
    gone.healthy = False
    for sid, before in picks.items():
        after = choose_backend(backends, session_id=sid)
        if before is not gone:
            assert after is before
        else:
            assert after is not gone


def test_least_outstanding_without_session() -> None:
    a, b = Backend("a:1", healthy=True, outstanding=3), Backend("b:1", healthy=True, outstanding=1)
    assert choose_backend([a, b], session_id=None) is b
    assert choose_backend([a, b], session_id=None, exclude=[b]) is a
    assert choose_backend([a, b], session_id=None, exclude=[a, b]) is None


async def test_sse_events_reframes_split_chunks() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b"data: {\"a\"", b":1}\n", b"\ndata: [DO", b"NE]\r\n\r\n"):
            yield piece

    assert [e async for e in sse_events(chunks())] == [b'data: {"a":1}\n\n', b"data: [DONE]\n\n"]


def test_stream_account_reads_usage_and_hides_it_unless_asked() -> None:
    usage_event = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'
    text_event = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
    hidden = StreamAccount(collect_text=True, forward_usage_chunk=False)
    assert hidden.observe(text_event) is True
    assert hidden.observe(usage_event) is False
    assert hidden.observe(b"data: [DONE]\n\n") is True
    assert hidden.usage == {"prompt_tokens": 3, "completion_tokens": 5} and hidden.done and hidden.text == ["hi"]
    assert StreamAccount(collect_text=False, forward_usage_chunk=True).observe(usage_event) is True


@pytest.mark.parametrize("sid", ["abc", "", "a" * 129, "-leading-dash", "sp ace-12345", "tab\t12345678"])
def test_bad_session_ids(sid: str) -> None:
    with pytest.raises(ApiError) as err:
        validate_session_id(sid)
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, ["GATEWAY_BACKENDS"]),
        ({"GATEWAY_BACKENDS": "nohostport"}, ["GATEWAY_BACKENDS"]),
        ({"GATEWAY_BACKENDS": "a:1", "GATEWAY_AUTH_ENABLED": "true"},
         ["GATEWAY_AUTH_ENABLED", "GATEWAY_API_KEY_HASHES"]),
        ({"GATEWAY_BACKENDS": "a:1", "GATEWAY_API_KEY_HASHES": "{\"plain-key\": \"x\"}"}, ["sha256"]),
        ({"GATEWAY_BACKENDS": "a:1", "GATEWAY_API_KEY_HASHES": "not json"}, ["GATEWAY_API_KEY_HASHES"]),
        ({"GATEWAY_BACKENDS": "a:1", "GATEWAY_AUTH_ENABLED": "false", "GATEWAY_OIDC_ISSUER": "https://x"},
         ["GATEWAY_OIDC_JWKS_URL"]),
        ({"GATEWAY_BACKENDS": "a:1", "GATEWAY_AUTH_ENABLED": "false", "GATEWAY_CONNECT_TIMEOUT": "-1"},
         ["GATEWAY_CONNECT_TIMEOUT"]),
        ({"GATEWAY_BACKENDS": "a:1", "GATEWAY_AUTH_ENABLED": "maybe"}, ["GATEWAY_AUTH_ENABLED"]),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]
) -> None:
    for key in list(GatewaySettings.model_fields):
        monkeypatch.delenv(f"GATEWAY_{key.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(GatewaySettingsError) as err:
        load_settings()
    for name in names:
        assert name in str(err.value)


def test_secrets_do_not_show_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_BACKENDS", "a:1")
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD", "hunter2-redis")
    monkeypatch.setenv("GATEWAY_API_KEY_HASHES", '{"' + "a" * 64 + '": "svc"}')
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "a" * 64 not in repr(settings)
    assert settings.key_hashes == {"a" * 64: "svc"}


def test_secrets_come_from_the_secrets_directory_and_an_env_var_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Deployment mounts the Secrets as files named like the variables (pydantic-settings' secrets_dir);
    a variable of the same name in the environment overrides its file (a local override)."""
    for key in list(GatewaySettings.model_fields):
        monkeypatch.delenv(f"GATEWAY_{key.upper()}", raising=False)
    monkeypatch.setenv("GATEWAY_BACKENDS", "a:1")
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path))
    (tmp_path / "GATEWAY_API_KEY_HASHES").write_text('{"' + "b" * 64 + '": "from-file"}\n')
    (tmp_path / "GATEWAY_REDIS_PASSWORD").write_text("file-password\n")
    settings = load_settings()
    assert settings.key_hashes == {"b" * 64: "from-file"}
    assert settings.redis_password is not None and settings.redis_password.get_secret_value() == "file-password"
    monkeypatch.setenv("GATEWAY_REDIS_PASSWORD", "env-password")
    overridden = load_settings().redis_password
    assert overridden is not None and overridden.get_secret_value() == "env-password"
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path / "absent"))  # no directory: no secrets, no warning
    monkeypatch.delenv("GATEWAY_REDIS_PASSWORD")
    monkeypatch.setenv("GATEWAY_AUTH_ENABLED", "false")  # no key hashes either
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_settings().redis_password is None
