"""What `make verify` expects, derived from a stack's settings (pure: no host, no cluster touched here).

Every number a check compares against comes from here, and everything here comes from the stack file
(stacks/Pulumi.<stack>.yaml, or the local stack's localstack/local.yaml) through the settings contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stackspec.render.nginx import K8S_CONF_DIR, SSE_LOCATION
from stackspec.render.vllm_args import vllm_env
from stackspec.settings import PROJECT, StackSettings, settings_from_config
from stackspec.stackfile import read_stack_config, site_stacks, stack_file, with_placeholders

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("8Gi", "512M") in bytes."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"not a byte quantity: {quantity!r}")
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def site_settings(stack: str) -> StackSettings:
    """A site stack's settings as the program parses them (secret config: placeholders; none is checked here)."""
    raw, _ = read_stack_config(stack_file(stack))
    return settings_from_config(with_placeholders(raw))


def every_site() -> dict[str, StackSettings]:
    return {stack: site_settings(stack) for stack in site_stacks()}


@dataclass(frozen=True)
class GpuHost:
    """One GPU host of a stack's pool, reached over ssh (testinfra)."""

    stack: str
    name: str  # gpuPool.hosts[].name (the Kubernetes node name)
    gpus: int
    gpu_model: str  # gpuPool.gpuModel, e.g. rtx-4090d
    gpu_memory_gb: float
    driver_min_version: str
    cache_path: str | None  # inference.cache.hostPath (None: the cache is a PVC, not on the host)
    cache_min_free_bytes: int

    @property
    def id(self) -> str:
        return f"{self.stack}-{self.name}"

    def model_matches(self, nvidia_name: str) -> bool:
        """`NVIDIA GeForce RTX 4090 D` matches `rtx-4090d`: letters and digits only, case-insensitive."""
        def squash(text: str) -> str:
            return re.sub(r"[^a-z0-9]", "", text.lower())
        return squash(self.gpu_model) in squash(nvidia_name)

    def memory_matches(self, total_mib: float) -> bool:
        """nvidia-smi's memory.total (MiB) is the card's size in GiB give or take half a GiB (24564 MiB: 24)."""
        return abs(total_mib / 1024 - self.gpu_memory_gb) <= 0.5


def gpu_hosts(stack: str, settings: StackSettings) -> list[GpuHost]:
    pool, cache = settings.gpu_pool, settings.inference.cache
    return [GpuHost(stack=stack, name=h.name, gpus=h.gpus, gpu_model=pool.gpu_model,
                    gpu_memory_gb=pool.gpu_memory_gb, driver_min_version=pool.driver_min_version,
                    cache_path=cache.host_path if cache.kind == "hostPath" else None,
                    cache_min_free_bytes=int(cache.min_free_gb * 10**9))
            for h in pool.hosts]


@dataclass(frozen=True)
class Workload:
    """One workload of a stack's namespace, its pods found by label, checked in one container (kubectl exec)."""

    stack: str
    name: str  # app.kubernetes.io/name: vllm, gateway, edge, redis
    container: str
    namespace: str
    context: str | None  # kubernetes.context (None: kubectl's current context)

    @property
    def id(self) -> str:
        return f"{self.stack}-{self.name}"

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/name={self.name},app.kubernetes.io/part-of={PROJECT}"


WORKLOAD_CONTAINERS = {"vllm": "vllm", "gateway": "gateway", "edge": "nginx", "redis": "redis"}


def workloads(stack: str, settings: StackSettings) -> dict[str, Workload]:
    k = settings.kubernetes
    return {name: Workload(stack, name, container, k.namespace, k.context)
            for name, container in WORKLOAD_CONTAINERS.items()}


@dataclass(frozen=True)
class VllmPod:
    nccl_p2p_disable: str | None  # "1" when TP > 1 on 4090-class cards, else unset
    shm_bytes: int  # the memory-backed /dev/shm (inference.shmSize)


def vllm_pod(settings: StackSettings) -> VllmPod:
    return VllmPod(nccl_p2p_disable=vllm_env(settings).get("NCCL_P2P_DISABLE"),
                   shm_bytes=quantity_bytes(settings.inference.shm_size))


@dataclass(frozen=True)
class Edge:
    """Nginx's effective settings for the streamed API location."""

    location: str
    directives: dict[str, str]  # directive -> expected effective value (`nginx -T`)
    client_max_body_size: str
    conf_in_pod: str


def edge(settings: StackSettings) -> Edge:
    timeout = f"{settings.edge_read_timeout_seconds}s"
    return Edge(
        location=SSE_LOCATION,
        directives={
            # SSE: every event goes to the client as it comes; no cache; the request body streams too.
            "proxy_buffering": "off",
            "proxy_cache": "off",
            "proxy_request_buffering": "off",
            "proxy_http_version": "1.1",
            # Longer than the gateway's total timeout: the gateway ends every stream itself.
            "proxy_read_timeout": timeout,
            "proxy_send_timeout": timeout,
        },
        client_max_body_size=settings.edge.client_max_body_size,
        conf_in_pod=f"{K8S_CONF_DIR}/nginx.conf",
    )


@dataclass(frozen=True)
class Redis:
    config: dict[str, str]  # CONFIG GET name -> expected value
    requirepass: bool = True  # a password is required (its value is a secret: only "set" is checked)


def redis(settings: StackSettings) -> Redis:
    r = settings.redis
    return Redis(config={"appendonly": "yes", "appendfsync": r.appendfsync, "maxmemory-policy": "noeviction"})


def local_settings() -> StackSettings:
    """The local stack's settings (localstack/local.yaml). Auth is off here only because its dev key is not
    needed for anything this suite checks (edge and Redis settings do not depend on it)."""
    from localstack.settings import LOCAL_YAML, read_stack_file
    from stackspec.settings import parse_settings

    values = read_stack_file(LOCAL_YAML)
    values["gateway"] = {**values.get("gateway", {}), "authEnabled": False}
    return parse_settings(values)
