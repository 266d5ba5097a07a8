"""Settings -> the vLLM OpenAI server's command line (the arguments after `-m vllm.entrypoints.openai.api_server`).

One render function for both places vLLM runs: the Kubernetes container args (infra/components/inference.py)
and the local CPU run (localstack), which passes `extra` flags that win over the rendered ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from stackspec.settings import StackSettings

ENTRYPOINT_MODULE = "vllm.entrypoints.openai.api_server"
CACHE_MOUNT = "/models"  # where the model cache (hostPath or PVC) is mounted in the vLLM container
# vLLM's $HOME in the cluster: an emptyDir, since the root filesystem is read-only and the user has no home.
HOME_MOUNT = "/home/vllm"


def needs_p2p_disabled(settings: StackSettings) -> bool:
    """RTX 4090-class cards hang in NCCL peer-to-peer; TP on them must go through host memory."""
    return settings.inference.tensor_parallel_size > 1 and "4090" in settings.gpu_pool.gpu_model


def writable_dirs_env(home: str, cache: str, hf_home: str) -> dict[str, str]:
    """Where vLLM and the libraries under it write, each named: with a read-only root filesystem and a UID
    that owns nothing in the image, every write must land in `home` or `cache` (both writable by it), and
    a default that slipped through (`~/.triton`, `~/.cache/flashinfer`, `/tmp/torchinductor_<user>`) would
    fail at the first compile. The cluster (an emptyDir) and the local stack (a directory of its own) alike."""
    return {
        "HOME": home,
        "XDG_CACHE_HOME": cache,
        "XDG_CONFIG_HOME": f"{home}/.config",
        "VLLM_CACHE_ROOT": f"{cache}/vllm",  # torch.compile artefacts, compiled-graph cache
        "VLLM_CONFIG_ROOT": f"{home}/.config/vllm",
        "TORCHINDUCTOR_CACHE_DIR": f"{cache}/torchinductor",
        "TRITON_CACHE_DIR": f"{cache}/triton",
        "FLASHINFER_WORKSPACE_BASE": cache,  # FlashInfer's JIT kernels
        "CUDA_CACHE_PATH": f"{cache}/nv",  # the driver's PTX JIT cache
        "NUMBA_CACHE_DIR": f"{cache}/numba",
        "OUTLINES_CACHE_DIR": f"{cache}/outlines",
        "HF_HOME": hf_home,
    }


def vllm_env(settings: StackSettings) -> dict[str, str]:
    """The vLLM container's environment (infra/components/inference.py; checked in the pods by `make verify`)."""
    env = {
        **writable_dirs_env(HOME_MOUNT, f"{HOME_MOUNT}/.cache", CACHE_MOUNT),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if needs_p2p_disabled(settings):
        env["NCCL_P2P_DISABLE"] = "1"
    return env


def _flag_key(token: str) -> str:
    """`--no-enable-prefix-caching` and `--enable_prefix_caching=x` both name `enable-prefix-caching`."""
    name = token.split("=", 1)[0].removeprefix("--").replace("_", "-")
    return name.removeprefix("no-")


def _group(args: Sequence[str]) -> list[list[str]]:
    """Split an argument list into [flag, values...] groups (a value never starts with `--`)."""
    groups: list[list[str]] = []
    for token in args:
        if token.startswith("--") or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def merge_args(rendered: Sequence[str], extra: Sequence[str]) -> list[str]:
    """`rendered` minus every flag that `extra` sets again, then `extra`: the later value wins without
    leaving duplicates (vLLM's parser warns about duplicate keys)."""
    overridden = {_flag_key(g[0]) for g in _group(extra) if g[0].startswith("--")}
    kept = [g for g in _group(rendered) if _flag_key(g[0]) not in overridden]
    return [token for group in kept for token in group] + list(extra)


def rope_scaling_override(settings: StackSettings) -> dict[str, object] | None:
    """The HF config override that enables YaRN beyond the model's native positions, or None."""
    rope = settings.model.rope_scaling
    if rope is None:
        return None
    return {
        "rope_scaling": {
            "rope_type": rope.rope_type,
            "factor": rope.factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
        }
    }


def render_vllm_args(
    settings: StackSettings, *, model: str, host: str, port: int, extra: Sequence[str] = ()
) -> list[str]:
    inf, mdl = settings.inference, settings.model
    args = [
        "--model", model,
        "--served-model-name", mdl.served_name,
        "--host", host,
        "--port", str(port),
        "--tensor-parallel-size", str(inf.tensor_parallel_size),
        "--max-model-len", str(inf.max_model_len),
        "--gpu-memory-utilization", str(inf.gpu_memory_utilization),
        "--max-num-seqs", str(inf.max_num_seqs),
        "--dtype", inf.dtype,
        "--enable-prefix-caching" if inf.enable_prefix_caching else "--no-enable-prefix-caching",
    ]
    if mdl.revision:
        args += ["--revision", mdl.revision]
    if mdl.quantization:
        args += ["--quantization", mdl.quantization]
    if inf.tool_calling.enabled:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", inf.tool_calling.parser,
                 "--tool-strict-level", inf.tool_calling.strict_level]
    args += ["--structured-outputs-config", json.dumps(inf.structured_outputs.vllm_config(), sort_keys=True)]
    override = rope_scaling_override(settings)
    if override is not None:
        # vLLM 0.32 has no --rope-scaling flag; YaRN goes in as an override of the HF config.
        args += ["--hf-overrides", json.dumps(override, sort_keys=True)]
    return merge_args(args, extra)
