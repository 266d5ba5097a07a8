"""Capacity model: does a model fit on the GPUs of one vLLM replica, and how many sequences at once.

Pure arithmetic on decimal gigabytes, matching how vLLM budgets memory: it takes
`gpu_memory_utilization` of each GPU, subtracts the weights (split across tensor-parallel
ranks) and a runtime reserve (activations, CUDA context), and gives the rest to the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1_000_000_000


@dataclass(frozen=True)
class ModelShape:
    """What the capacity model needs to know about a transformer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    native_max_positions: int
    weight_bytes: dict[str, int]  # by quantisation ("none", "awq", "gptq", "fp8")
    kv_dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        # K and V, per layer, per KV head.
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes


# Qwen2.5-7B-Instruct: 28 layers, 4 KV heads of 128 (GQA), 32,768 native positions.
# Weights: fp16 15.2 GB; the published 4-bit AWQ/GPTQ checkpoints are ~5.6 GB; fp8 ~8.2 GB.
QWEN25_7B = ModelShape(
    num_layers=28,
    num_kv_heads=4,
    head_dim=128,
    native_max_positions=32_768,
    weight_bytes={"none": int(15.2 * GB), "awq": int(5.6 * GB), "gptq": int(5.6 * GB), "fp8": int(8.2 * GB)},
)


@dataclass(frozen=True)
class Capacity:
    usable_bytes: int
    weight_bytes: int
    reserve_bytes: int
    kv_cache_bytes: int
    kv_tokens: int
    max_model_len: int

    @property
    def fits(self) -> bool:
        return self.max_concurrent_full_sequences >= 1

    @property
    def max_concurrent_full_sequences(self) -> int:
        return max(self.kv_tokens, 0) // self.max_model_len

    def describe(self) -> str:
        return (
            f"usable {self.usable_bytes / GB:.1f} GB - weights {self.weight_bytes / GB:.1f} GB"
            f" - reserve {self.reserve_bytes / GB:.1f} GB = KV cache {self.kv_cache_bytes / GB:.1f} GB"
            f" = {self.kv_tokens:,} tokens = {self.max_concurrent_full_sequences}"
            f" concurrent sequences of {self.max_model_len:,} tokens"
        )


def replica_capacity(
    shape: ModelShape,
    *,
    quantization: str,
    gpu_memory_gb: float,
    gpu_memory_utilization: float,
    tensor_parallel_size: int,
    max_model_len: int,
    reserve_gb_per_gpu: float,
) -> Capacity:
    """KV-cache capacity of one vLLM replica spanning `tensor_parallel_size` GPUs."""
    usable = int(gpu_memory_gb * GB * gpu_memory_utilization) * tensor_parallel_size
    weights = shape.weight_bytes[quantization]
    reserve = int(reserve_gb_per_gpu * GB) * tensor_parallel_size
    kv_bytes = usable - weights - reserve
    return Capacity(
        usable_bytes=usable,
        weight_bytes=weights,
        reserve_bytes=reserve,
        kv_cache_bytes=kv_bytes,
        kv_tokens=max(kv_bytes, 0) // shape.kv_bytes_per_token,
        max_model_len=max_model_len,
    )
