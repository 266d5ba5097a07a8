"""The local stack's settings: the stack-file schema, a kept dev key, clear errors for bad environment."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from localstack.settings import API_KEY_PREFIX, ensure_api_key, local_settings
from localstack.stack import LocalConfig, StackError, settings_overrides, state_dir
from stackspec.capacity import GB
from stackspec.settings import SettingsError


def test_local_yaml_parses_with_auth_on_and_the_key_hash() -> None:
    key = API_KEY_PREFIX + "abc"
    s = local_settings(key)
    assert s.gateway.auth_enabled
    assert s.api_key_hashes == {hashlib.sha256(key.encode()).hexdigest(): "local-dev"}
    assert s.gateway.replicas == 2
    assert s.site.role == "dev"
    # The pretend 4090D still gets the real capacity check.
    assert s.capacity.fits and s.capacity.usable_bytes > 20 * GB
    # History plus an answer of the page's default size must fit the context.
    assert s.gateway.history_token_budget + 256 < s.inference.max_model_len


def test_overrides_go_through_the_same_validation() -> None:
    with pytest.raises(SettingsError, match=r"qwen-serving:inference\.replicas"):
        local_settings("sk-local-x", overrides={"inference": {"replicas": 3}})


def test_api_key_is_made_once_private_and_kept(workdir: Path) -> None:
    first = ensure_api_key(workdir)
    assert first.startswith(API_KEY_PREFIX) and len(first) > 30
    assert stat.S_IMODE((workdir / "api-key").stat().st_mode) == 0o600
    assert ensure_api_key(workdir) == first
    assert ensure_api_key(workdir / "other") != first


def test_config_from_env_defaults() -> None:
    cfg = LocalConfig.from_env({})
    assert (cfg.port, cfg.vllm_replicas, cfg.model, cfg.images) == (8080, 1, None, False)
    assert cfg.root == state_dir({})
    assert LocalConfig.from_env({"IMAGES": "1"}).images is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "80"}, "PORT='80': give a port number between 1024 and 65535"),
        ({"PORT": "http"}, "PORT='http'"),
        ({"VLLM_REPLICAS": "0"}, "VLLM_REPLICAS='0': give 1 to 4"),
        ({"MODEL": "/nonexistent/model"}, "MODEL=/nonexistent/model: no config.json there"),
        ({"TEST_MODEL": "huge"}, "TEST_MODEL='huge': choose one of tiny-qwen2, paced-qwen2"),
        ({"IMAGES": "yes"}, "IMAGES='yes': 1 runs the gateway and the edge from their images"),
    ],
)
def test_bad_environment_names_the_variable_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(StackError) as err:
        LocalConfig.from_env(env)
    assert message in str(err.value)


def test_model_env_accepts_a_model_directory(workdir: Path) -> None:
    (workdir / "config.json").write_text("{}")
    cfg = LocalConfig.from_env({"MODEL": str(workdir), "LOCAL_STATE_DIR": str(workdir / "state")})
    assert cfg.model == workdir.resolve()
    assert cfg.root == (workdir / "state").resolve()


def test_the_test_model_is_served_under_its_name() -> None:
    paced = LocalConfig.from_env({})
    fast = LocalConfig.from_env({"TEST_MODEL": "tiny-qwen2"})
    assert paced.test_model == "paced-qwen2"  # the default: streams at a GPU-like pace
    for cfg in (paced, fast):
        s = local_settings("sk-local-x", overrides=settings_overrides(cfg))
        assert s.model.served_name == cfg.test_model


def test_real_weights_are_served_under_their_directory_name(workdir: Path) -> None:
    model = workdir / "Qwen2.5 7B Instruct"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = LocalConfig.from_env({"MODEL": str(model), "VLLM_REPLICAS": "2"})
    s = local_settings("sk-local-x", overrides=settings_overrides(cfg))
    assert s.model.served_name == "Qwen2.5-7B-Instruct"
    assert s.inference.replicas == 2 and s.gpu_pool.total_gpus == 2


def test_the_local_gateways_run_the_processes_their_settings_give() -> None:
    """`make up` starts each gateway with the rendered environment: the same processes per pod as a cluster."""
    from types import SimpleNamespace
    from typing import Any

    from localstack.stack import gateway_env

    vllm: Any = SimpleNamespace(port=8000)  # gateway_env reads a backend's port and Redis's url and password
    redis: Any = SimpleNamespace(url="redis://127.0.0.1:6379/0", password=None)
    one = gateway_env(local_settings("sk-local-x"), [vllm], redis, api_key_hashes={})
    assert one["GATEWAY_PROCESSES"] == "1"  # local.yaml's request (500m): one process
    two = gateway_env(local_settings("sk-local-x", overrides={"gateway": {"cpuRequest": "2"}}), [vllm], redis,
                      api_key_hashes={})
    assert two["GATEWAY_PROCESSES"] == "2" and float(two["GATEWAY_CPU_CORES"]) == 2
