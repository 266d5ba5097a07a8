"""Run inside .venv-vllm: parse argument lists with vLLM's own server parser and report what it understood.

stdin: JSON list of argument lists. stdout: JSON list of {"ok": bool, "error": str, "args": {...}}.
This is the parser `python -m vllm.entrypoints.openai.api_server` builds (vllm/entrypoints/launchers/
api_server/entry.py: FlexibleArgumentParser + make_arg_parser + validate_parsed_serve_args).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


def parse(argv: list[str]) -> dict[str, Any]:
    parser = make_arg_parser(FlexibleArgumentParser(prog="api_server"))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace = parser.parse_args(argv)
            validate_parsed_serve_args(namespace)
    except SystemExit:
        return {"ok": False, "error": stderr.getvalue(), "args": {}}
    except (TypeError, ValueError) as err:
        return {"ok": False, "error": str(err), "args": {}}
    return {"ok": True, "error": stderr.getvalue(), "args": {k: _plain(v) for k, v in vars(namespace).items()}}


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    json.dump([parse(argv) for argv in cases], sys.stdout)
