"""`python -m verify [--stack NAME] [--hosts SPECS] [--local-state DIR] [pytest args]` (what `make verify` runs).

No --stack, or `--stack local`: the local stack's suite. A site stack: its GPU hosts (ssh) and pods (kubectl).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make verify", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", default="local")
    parser.add_argument("--hosts", default="", help="testinfra host specs of the GPU hosts, comma separated")
    parser.add_argument("--local-state", default=None)
    args, rest = parser.parse_known_args(argv)
    options = ["-p", "no:cacheprovider", "--rootdir", str(HERE.parent)]
    if args.stack == "local":
        suites = [str(HERE / "test_local.py")]
        if args.local_state:
            options += ["--local-state", args.local_state]
    else:
        suites = [str(HERE / "test_hosts.py"), str(HERE / "test_pods.py")]
        options += ["--stack", args.stack] + (["--gpu-hosts", args.hosts] if args.hosts else [])
    return int(pytest.main([*suites, *options, *rest]))


if __name__ == "__main__":
    sys.exit(main())
