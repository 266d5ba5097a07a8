"""`make bench` = `python -m bench`: every benchmark (timing goals live here, not in tests)."""

from __future__ import annotations

import sys

from bench import gateway_latency


def main() -> int:
    return gateway_latency.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
