"""`make loadtest URL=… RPS=… [STREAM=1] [KEY=…] [DURATION=60s]`: Locust (bench/locustfile.py), headless.

Against the local stack (`make up`) the URL, key and model default to what it wrote in
build/local/endpoint.json. Users = RPS × `--users-per-rps` (each sends at RPS / users per second), so long
streams do not cap the rate. Prints P95 TTFT (streaming) or P95 latency against the SLO; exit 1 if missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = REPO_ROOT / "build" / "local" / "endpoint.json"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench loadtest", description=__doc__)
    parser.add_argument("--url", default="", help="base URL (default: the local stack's)")
    parser.add_argument("--rps", type=float, default=2.0, help="target requests per second")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--key", default="", help="API key (default: the local stack's)")
    parser.add_argument("--model", default="")
    parser.add_argument("--duration", default="60s", help="Locust --run-time (e.g. 30s, 5m)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--users-per-rps", type=float, default=4.0)
    parser.add_argument("--slo", type=float, default=1.5, help="P95 TTFT goal in seconds")
    args = parser.parse_args(argv)

    local = json.loads(ENDPOINT.read_text()) if ENDPOINT.is_file() else {}
    url = args.url or local.get("url", "")
    if not url:
        print("give URL=… (no local stack found in build/local/endpoint.json; `make up` writes it)", file=sys.stderr)
        return 2
    key = args.key or (local.get("api_key", "") if url == local.get("url") else "")
    model = args.model or (local.get("model", "") if url == local.get("url") else "")
    users = max(1, math.ceil(args.rps * args.users_per_rps))
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if locust is None:
        print("locust is missing; run `make setup`", file=sys.stderr)
        return 2
    env = {**os.environ, "LOADTEST_KEY": key, "LOADTEST_MODEL": model, "LOADTEST_STREAM": "1" if args.stream else "",
           "LOADTEST_MAX_TOKENS": str(args.max_tokens), "LOADTEST_PER_USER_RPS": str(args.rps / users),
           "LOADTEST_SLO_SECONDS": str(args.slo)}
    cmd = [locust, "-f", str(REPO_ROOT / "bench" / "locustfile.py"), "--headless", "--host", url.rstrip("/"),
           "-u", str(users), "-r", str(max(1, users // 5)), "--run-time", args.duration, "--only-summary",
           "--stop-timeout", "30"]
    print(f"locust: {users} users x {args.rps / users:.3f} req/s against {url} "
          f"({'streaming' if args.stream else 'non-streaming'}), {args.duration}", flush=True)
    return subprocess.run(cmd, env=env, check=False).returncode
