"""Schema-driven fuzzing of every gateway endpoint from its own OpenAPI document (schemathesis + hypothesis),
against a real gateway with real Redis and real vLLM (the fast test model): no input may produce a 5xx,
and every request gets an answer (a per-request timeout; a hang fails the test).

Cases are derandomized (the same cases every run) and bounded per operation and mode (schema-valid
"positive" cases and schema-breaking "negative" ones), to keep the run under a minute. The gateway under
test caps max_tokens at 8, so a valid generation request is cheap whatever the fuzzer picks.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Ok

from tests.gateway.conftest import JwksServer, StartGateway

EXAMPLES = 25  # per operation and mode (hypothesis stops earlier when it has tried all it can make)
BODY_EXAMPLES = 60  # for the two generation routes, whose bodies are where the input is
# Seconds: longer than the gateway takes to give up by itself (a 20 s first-token timeout per try here, and one
# retry on the other backend), so an unanswered request is a hang. (30 s was shorter than that: on a loaded
# machine a 5-prompt completion on a starved CPU vLLM outlasted it while the gateway was still right to wait.)
REQUEST_TIMEOUT = 90.0


def test_no_generated_request_gets_a_5xx_or_hangs(start_gw: StartGateway, jwks: JwksServer) -> None:
    gw = start_gw(max_tokens_cap="8", rate_limit_concurrent="64")
    gw.wait_backends_healthy(2)
    # An identity of its own (OIDC): the sessions and limits it fills are nobody else's.
    headers = {"Authorization": f"Bearer {jwks.token(sub='fuzzer')}"}
    document = httpx.get(f"{gw.url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    unsatisfiable: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid OpenAPI
        operations.append(result.ok())
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models",
                                             "/v1/sessions/{session_id}", "/healthz", "/readyz"}
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=BODY_EXAMPLES if operation.body else EXAMPLES, deadline=None, database=None,
                      derandomize=True, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: Any) -> None:
                try:
                    resp = case.call(base_url=gw.url, headers=headers, timeout=REQUEST_TIMEOUT)
                except requests.Timeout:
                    failures.append(f"{case.method} {case.formatted_path}: no answer in {REQUEST_TIMEOUT:g} s "
                                    f"({_describe(case)})")
                    return
                statuses[resp.status_code] += 1
                if resp.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} -> {resp.status_code} "
                                    f"{resp.text[:300]} ({_describe(case)})")

            try:
                run()
            except Unsatisfiable:
                # Nothing schema-breaking exists for an operation without a body or a constrained parameter
                # (GET /healthz; a path segment that is any string).
                assert mode == schemathesis.GenerationMode.NEGATIVE, f"{operation.label}: no valid case"
                assert not operation.body, f"{operation.label}: no invalid body generated"
                unsatisfiable.append(operation.label)
    total = sum(statuses.values())
    print(f"\nschemathesis: {total} generated requests over {len(operations)} operations; statuses {dict(statuses)}")
    assert not failures, "\n".join(failures[:10])
    assert total >= len(operations) * 2 - len(unsatisfiable)  # every operation was exercised
    assert any(200 <= s < 300 for s in statuses) and any(400 <= s < 500 for s in statuses)


def _describe(case: Any) -> str:
    return repr({"query": case.query, "headers": case.headers, "body": case.body})[:400]
