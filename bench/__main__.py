"""`make bench` = `python -m bench [gateway|latency|pace|emitter|loadtest|wait|guided] ...` (goals: here).

- gateway (default): what the gateway adds, side by side with the direct path, in one run (bench/side_by_side.py)
- latency: the gateway's added latency against real vLLM direct, interleaved (bench/gateway_latency.py)
- pace: how fast each test model decodes on this machine (bench/test_model_pace.py)
- emitter: run the paced OpenAI-compatible emitter on its own (bench/emitter.py)
- loadtest: Locust against a site or the local stack, P95 TTFT against the SLO (bench/loadtest.py)
- routing: routing policies (round-robin, session, prefix-aware, vllm-router) on two real vLLMs (bench/routing.py)
- wait: what a session write costs with `WAIT 1 <ms>` for RPO ~ 0 (bench/replica_wait.py)
- guided: a JSON-Schema-guided answer and a named tool call against unguided ones of the same length (bench/guided.py)
"""

from __future__ import annotations

import sys

from bench import emitter, gateway_latency, guided, loadtest, replica_wait, routing, side_by_side, test_model_pace

COMMANDS = {"gateway": side_by_side.main, "latency": gateway_latency.main, "pace": test_model_pace.main,
            "emitter": emitter.main, "loadtest": loadtest.main, "wait": replica_wait.main, "guided": guided.main,
            "routing": routing.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return side_by_side.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
