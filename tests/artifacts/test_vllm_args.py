"""The rendered vLLM arguments are accepted, and understood as meant, by vLLM's own argument parser.

The parser runs in .venv-vllm (the real vLLM 0.32 CPU build) in one subprocess for all cases (~7 s).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from infra.offline import REPO
from stackspec.render.vllm_args import merge_args, render_vllm_args
from stackspec.settings import StackSettings
from tests.artifacts.conftest import STACKS, settings_with, stack_sections, stack_settings

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
PARSE_SCRIPT = Path(__file__).with_name("vllm_parse.py")
LOCAL_EXTRAS = ("--enforce-eager", "--kv-cache-memory-bytes", "67108864", "--dtype", "bfloat16",
                "--max-model-len", "1024")
YARN = {"ropeType": "yarn", "factor": 4, "originalMaxPositionEmbeddings": 32768}


def yarn_settings() -> StackSettings:
    sections = stack_sections("prod")
    return settings_with("prod", inference=sections["inference"] | {"maxModelLen": 131072},
                         model={"ropeScaling": YARN})


def no_tools_settings() -> StackSettings:
    off = {"toolCalling": {"enabled": False},
           "structuredOutputs": {"backend": "guidance", "disableAnyWhitespace": False}}
    return settings_with("dev", inference=stack_sections("dev")["inference"] | off)


def awq_settings() -> StackSettings:
    return settings_with("dev", model={"quantization": "awq", "revision": "main"},
                         inference={"replicas": 1, "enablePrefixCaching": False, "maxNumSeqs": 8})


def cases() -> dict[str, tuple[StackSettings, list[str]]]:
    out: dict[str, tuple[StackSettings, list[str]]] = {}
    for stack in STACKS:
        settings = stack_settings(stack)
        out[stack] = (settings, render_vllm_args(settings, model=settings.model.name, host="0.0.0.0", port=8000))
    yarn, awq, dev = yarn_settings(), awq_settings(), stack_settings("dev")
    out["yarn"] = (yarn, render_vllm_args(yarn, model=yarn.model.name, host="0.0.0.0", port=8000))
    out["awq"] = (awq, render_vllm_args(awq, model="Qwen/Qwen2.5-7B-Instruct-AWQ", host="0.0.0.0", port=8000))
    plain = no_tools_settings()
    out["no-tools"] = (plain, render_vllm_args(plain, model=plain.model.name, host="0.0.0.0", port=8000))
    out["local"] = (dev, render_vllm_args(dev, model="/models/tiny", host="127.0.0.1", port=18000,
                                          extra=LOCAL_EXTRAS))
    return out


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict[str, Any]]:
    assert VLLM_PYTHON.exists(), "the vLLM venv is missing: run `make setup`"
    named = cases()
    argvs = [argv for _, argv in named.values()] + [["--model", "m", "--rope-scaling", "{}"]]
    result = subprocess.run([str(VLLM_PYTHON), str(PARSE_SCRIPT)], input=json.dumps(argvs), capture_output=True,
                            text=True, timeout=240, cwd=REPO, env={"PATH": "/usr/bin:/bin", "HOME": str(REPO / "build"),
                                                                   "VLLM_NO_USAGE_STATS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout)
    return dict(zip([*named, "unknown-flag"], answers, strict=True))


@pytest.mark.parametrize("case", [*STACKS, "yarn", "awq", "local", "no-tools"])
def test_parser_accepts_and_understands_the_rendered_args(case: str, parsed: dict[str, dict[str, Any]]) -> None:
    settings, _ = cases()[case]
    answer = parsed[case]
    assert answer["ok"], answer["error"]
    assert "duplicate" not in answer["error"].lower(), answer["error"]
    args, inf = answer["args"], settings.inference
    assert args["served_model_name"] == [settings.model.served_name]
    assert args["tensor_parallel_size"] == inf.tensor_parallel_size
    assert args["max_num_seqs"] == inf.max_num_seqs
    assert args["gpu_memory_utilization"] == inf.gpu_memory_utilization
    assert args["enable_prefix_caching"] is inf.enable_prefix_caching
    assert args["quantization"] == settings.model.quantization
    assert args["revision"] == settings.model.revision
    tools, structured = inf.tool_calling, inf.structured_outputs
    assert args["enable_auto_tool_choice"] is tools.enabled
    assert args["tool_call_parser"] == (tools.parser if tools.enabled else None)
    if tools.enabled:
        assert args["tool_strict_level"] == tools.strict_level
    # vLLM's own StructuredOutputsConfig, built from the rendered JSON (its repr: the parser's object)
    assert f"backend='{structured.backend}'" in args["structured_outputs_config"]
    assert f"disable_any_whitespace={structured.disable_any_whitespace}" in args["structured_outputs_config"]
    if case == "local":  # the extras win over the rendered values, once each
        assert (args["max_model_len"], args["dtype"], args["enforce_eager"]) == (1024, "bfloat16", True)
        assert args["kv_cache_memory_bytes"] == 67108864
        assert args["host"] == "127.0.0.1" and args["port"] == 18000
    else:
        assert (args["max_model_len"], args["dtype"]) == (inf.max_model_len, inf.dtype)
        assert args["host"] == "0.0.0.0" and args["port"] == 8000


def test_yarn_reaches_vllm_as_a_rope_scaling_override(parsed: dict[str, dict[str, Any]]) -> None:
    assert parsed["yarn"]["args"]["hf_overrides"] == {
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    }
    assert parsed["yarn"]["args"]["max_model_len"] == 131072
    assert not parsed["prod"]["args"]["hf_overrides"]  # native 32k: no override


def test_every_stack_serves_tool_calls_and_compact_guided_json(parsed: dict[str, dict[str, Any]]) -> None:
    """Qwen2.5's tool format is Hermes; without the parser vLLM refuses named and `required` tool_choice."""
    for stack in STACKS:
        args = parsed[stack]["args"]
        assert (args["enable_auto_tool_choice"], args["tool_call_parser"]) == (True, "hermes"), stack
        assert "backend='xgrammar', disable_any_whitespace=True" in args["structured_outputs_config"], stack


def test_the_parser_is_strict(parsed: dict[str, dict[str, Any]]) -> None:
    """vLLM 0.32 dropped --rope-scaling: the real parser refuses it, which is why YaRN goes via --hf-overrides."""
    assert not parsed["unknown-flag"]["ok"]
    assert "--rope-scaling" in parsed["unknown-flag"]["error"]


def test_extra_replaces_a_rendered_flag_and_its_negation() -> None:
    merged = merge_args(["--max-model-len", "8192", "--enable-prefix-caching", "--dtype", "auto"],
                        ["--no-enable-prefix-caching", "--max_model_len=1024"])
    assert merged == ["--dtype", "auto", "--no-enable-prefix-caching", "--max_model_len=1024"]
