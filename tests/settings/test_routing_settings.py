"""`gateway.routing` (issue 20): the gateway's RoutingTuning, checked at `make plan` with the stack's key
names, rendered into the gateway's environment, its per-backend cache sized from the capacity model."""

from __future__ import annotations

import json

import pytest

from stackspec.render.gateway_env import render_gateway_env
from stackspec.settings import SettingsError
from tests.stacks import settings_with, stack_settings


@pytest.mark.parametrize(("routing", "key", "words"), [
    ({"loadFactor": 0.9}, "gateway.routing.loadFactor", "greater than or equal to 1"),
    ({"policy": "random"}, "gateway.routing.policy", "'prefix', 'session' or 'round_robin'"),
    ({"blockTokens": 2}, "gateway.routing.blockTokens", "greater than or equal to 4"),
    ({"blockSize": 16}, "gateway.routing.blockSize", "unknown key"),
])
def test_bad_routing_settings_name_the_key(routing: dict[str, object], key: str, words: str) -> None:
    with pytest.raises(SettingsError) as err:
        settings_with("dev", gateway={"routing": routing})
    assert f"qwen-serving:{key}" in str(err.value) and words in str(err.value)


def test_the_default_is_prefix_aware_and_todays_policy_stays_selectable() -> None:
    default = stack_settings("prod").gateway_runtime().routing
    assert (default.policy, default.load_factor) == ("prefix", 1.25)
    # The router remembers per backend what one replica's KV cache holds (the capacity model).
    assert default.cache_tokens == stack_settings("prod").capacity.kv_tokens
    s = settings_with("dev", gateway={"routing": {"policy": "session", "loadFactor": 1.5, "cacheTokens": 5000}})
    env = render_gateway_env(s, backends_dns="vllm:8000", redis_url="redis://r:6379/0")
    assert json.loads(env["GATEWAY_ROUTING"]) == {
        "policy": "session", "load_factor": 1.5, "block_tokens": 32, "cache_tokens": 5000,
        "prefill_tokens_per_load": 1024}
