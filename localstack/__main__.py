"""`python -m localstack up|down|status` — what `make up` / `make down` run.

up:     start the stack (PORT, MODEL, VLLM_REPLICAS from the environment), print the endpoint, run until
        Ctrl-C (or `make down` from another shell), then stop every process it started.
down:   stop exactly the processes recorded in build/local/pids.json (if they are still the same ones).
status: show the recorded processes and the endpoint.
images: build the gateway and edge images with Docker (a dockerd of our own under build/docker, stopped
        afterwards), offline, from the build definitions the Pulumi Images component uses; `make images`.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType

from localstack.processes import ProcessError
from localstack.stack import (
    ENDPOINT_FILE,
    PIDS_FILE,
    Endpoint,
    LocalConfig,
    LocalStack,
    StackError,
    alive,
    read_state,
    state_dir,
    stop_recorded,
)
from stackspec.settings import SettingsError


def banner(endpoint: Endpoint, seconds: float, rss: int, processes: int, prometheus: str | None = None) -> str:
    body = json.dumps({"model": endpoint.model, "messages": [{"role": "user", "content": "Hello!"}]})
    return f"""
ready in {seconds:.1f} s  ({processes} processes, {rss / 2**30:.2f} GiB resident)
  web chat:  {endpoint.url}/
  API:       {endpoint.url}/v1   (OpenAI-compatible)
  API key:   {endpoint.api_key}   (development key; also in {state_dir() / ENDPOINT_FILE})
  model:     {endpoint.model}
  metrics:   {prometheus or "(Prometheus not started)"}   (Prometheus: rules, targets, graphs)

  curl -sN {endpoint.url}/v1/chat/completions \\
    -H 'Authorization: Bearer {endpoint.api_key}' -H 'Content-Type: application/json' \\
    -d '{body}'

Ctrl-C (or `make down` in another shell) stops everything.
"""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def up() -> int:
    try:
        config = LocalConfig.from_env()
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stack = LocalStack(config)
    # Ctrl-C stops the stack even when this process inherited SIGINT as ignored (a shell starts background
    # jobs that way, and so may a CI runner): without this, Ctrl-C would be silently lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    started = time.monotonic()
    try:
        endpoint = stack.start()
        elapsed = time.monotonic() - started
        print(banner(endpoint, elapsed, stack.rss_bytes(), len(stack.pids()), stack.prometheus_url), flush=True)
        while True:
            time.sleep(1)
            if not (stack.root / PIDS_FILE).exists():
                print("stopped by `make down`")
                stack.stop()
                return 0
            dead = stack.dead()
            if dead:
                print(f"error: {', '.join(dead)} exited; logs under {stack.root}/; stopping the rest",
                      file=sys.stderr)
                stack.stop()
                return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        stack.stop()
        print("stopped")
        return 0
    except (StackError, ProcessError, SettingsError, RuntimeError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        stack.stop()
        return 1


def down() -> int:
    stopped = stop_recorded(state_dir())
    if stopped:
        print("stopped: " + ", ".join(f"{e['name']} (pid {e['pid']})" for e in stopped))
    else:
        print(f"nothing to stop (no running local stack recorded in {state_dir()})")
    return 0


def status() -> int:
    root = state_dir()
    entries = read_state(root)
    if not entries:
        print("not running")
        return 1
    for e in entries:
        print(f"{e['name']:12} pid {e['pid']:>7}  {'running' if alive(e) else 'gone'}")
    endpoint = root / ENDPOINT_FILE
    if endpoint.is_file():
        print(f"endpoint: {json.loads(endpoint.read_text()).get('url')}")
    return 0


def images() -> int:
    from localstack.docker import Docker
    from localstack.images import build_images
    from localstack.settings import local_settings

    started = time.monotonic()
    try:
        settings = local_settings("images")  # local.yaml's images.* (the pinned bases), as `make up` uses
        with Docker() as docker:
            print(f"docker: dockerd {docker.run(['version', '--format', '{{.Server.Version}}']).stdout.strip()} "
                  f"on {docker.host}")
            built = build_images(docker, settings.images, print)
    except (ProcessError, SettingsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\nbuilt in {time.monotonic() - started:.0f} s (images in build/docker; `IMAGES=1 make up` runs them):")
    for b in built.values():
        print(f"  {b.tag:40} {b.size_bytes / 1e6:5.0f} MB  base {b.base} ({b.base_source})")
    return 0


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "status": status, "images": images}
    if len(argv) != 1 or argv[0] not in commands:
        print("usage: python -m localstack up|down|status|images", file=sys.stderr)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
