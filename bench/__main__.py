"""`make bench` = `python -m bench [latency|pace] ...`: every benchmark (timing goals live here, not in tests).

- latency (default): the gateway's added latency against vLLM direct (bench/gateway_latency.py)
- pace: how fast each test model decodes on this machine (bench/test_model_pace.py)
- wait: what a session write costs with `WAIT 1 <ms>` for RPO ~ 0 (bench/replica_wait.py)
"""

from __future__ import annotations

import sys

from bench import gateway_latency, replica_wait, test_model_pace

COMMANDS = {"latency": gateway_latency.main, "pace": test_model_pace.main, "wait": replica_wait.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return gateway_latency.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
