"""Layer 2: every stack runs under the mocks; per-tier assertions on the captured resources."""

from __future__ import annotations

import math
from typing import Any

import pytest

from app.gateway.settings import DEFAULT_SECRETS_DIR
from infra.components.network import pod_security_level
from stackspec.images import BACKUP_WHEELS
from stackspec.render.nginx import render_nginx_conf
from stackspec.render.redis import render_redis_conf
from stackspec.render.vllm_args import needs_p2p_disabled, render_vllm_args
from stackspec.settings import PROJECT
from tests.program.conftest import (
    CONFIG_MAP,
    DEPLOYMENT,
    IMAGE,
    NAMESPACE,
    PDB,
    RELEASE,
    SECRET,
    SERVICE,
    STACKS,
    STATEFUL_SET,
    container,
    obj,
    pod_spec,
    stack_run,
)

COMPONENTS = {
    "qwen-serving:network:Network", "qwen-serving:gpu_pool:GpuNodePool", "qwen-serving:images:Images",
    "qwen-serving:redis:Redis", "qwen-serving:inference:Inference", "qwen-serving:gateway:Gateway",
    "qwen-serving:edge:Edge",
}
LABEL_KEYS = {f"app.kubernetes.io/{k}" for k in ("name", "instance", "component", "part-of", "managed-by")}


@pytest.mark.parametrize("stack", STACKS)
def test_every_tier_is_one_component_and_every_resource_hangs_under_one(stack: str) -> None:
    run = stack_run(stack)
    components = {r.urn: r for r in run.resources if not r.custom}
    assert COMPONENTS <= {r.type for r in components.values()}
    for r in run.resources:
        if r.custom and r.type != "pulumi:providers:kubernetes":
            assert r.parent in components, f"{r.type} {r.name} is not a child of a component"
    for r in run.resources:
        if r.is_kubernetes and not r.type.endswith("Patch") and not r.type.startswith("kubernetes:helm"):
            labels = obj(run, r.type, r.name)["metadata"].get("labels") or {}
            assert LABEL_KEYS <= set(labels), f"{r.type} {r.name} lacks {LABEL_KEYS - set(labels)}"
            assert labels["app.kubernetes.io/part-of"] == PROJECT


@pytest.mark.parametrize("stack", STACKS)
def test_outputs_name_the_namespace_services_and_pinned_images(stack: str) -> None:
    run = stack_run(stack)
    out = run.outputs
    assert out["namespace"] == run.settings.kubernetes.namespace
    assert out["services"] == {"vllm": "vllm", "gateway": "gateway", "edge": "edge", "redis": "redis"}
    assert out["images"]["vllm"] == run.settings.images.vllm
    assert "@sha256:" in out["images"]["gateway"] and "@sha256:" in out["images"]["edge"]


# --- inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", STACKS)
def test_vllm_pods_get_tp_gpus_on_the_pool_spread_by_host(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    deployment = obj(run, DEPLOYMENT, "vllm")
    assert deployment["spec"]["replicas"] == s.inference.replicas
    # GPUs are all taken: a rolling update may not surge.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    spec = pod_spec(run, DEPLOYMENT, "vllm")
    vllm = container(spec, "vllm")
    tp = str(s.inference.tensor_parallel_size)
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == tp
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == tp
    assert spec["nodeSelector"] == {s.gpu_pool.node_label: "true"}
    assert {"key": s.gpu_pool.taint_key, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["runtimeClassName"] == "nvidia"
    anti = spec["affinity"]["podAntiAffinity"]
    if s.site.prod_like:
        term = anti["requiredDuringSchedulingIgnoredDuringExecution"][0]
    else:
        assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
        term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/name"] == "vllm"


@pytest.mark.parametrize("stack", STACKS)
def test_vllm_runs_the_rendered_command_line_with_shm_cache_and_nccl_env(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    spec = pod_spec(run, DEPLOYMENT, "vllm")
    vllm = container(spec, "vllm")
    assert vllm["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert vllm["args"] == render_vllm_args(s, model=s.model.name, host="0.0.0.0", port=s.inference.port)
    assert vllm["image"] == s.images.vllm
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    assert ("NCCL_P2P_DISABLE" in env) == (s.inference.tensor_parallel_size > 1)
    assert needs_p2p_disabled(s) == (s.inference.tensor_parallel_size > 1)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": s.inference.shm_size}
    mounts = {m["name"]: m["mountPath"] for m in vllm["volumeMounts"]}
    assert mounts["dshm"] == "/dev/shm"
    assert volumes["model-cache"]["hostPath"]["path"] == s.inference.cache.host_path
    assert env["HF_HOME"] == mounts["model-cache"]
    # A `vllm` Service would otherwise inject VLLM_PORT=tcp://..., which vLLM parses as its own setting.
    assert spec["enableServiceLinks"] is False


@pytest.mark.parametrize("stack", STACKS)
def test_vllm_probes_wait_for_loading_and_drain_gracefully(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    spec = pod_spec(run, DEPLOYMENT, "vllm")
    vllm = container(spec, "vllm")
    startup = vllm["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert s.inference.startup_budget_seconds <= budget < s.inference.startup_budget_seconds + startup["periodSeconds"]
    assert startup["httpGet"]["path"] == "/health"
    assert vllm["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"
    assert vllm["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pre_stop = int(vllm["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] == s.inference.termination_grace_seconds > pre_stop


@pytest.mark.parametrize("stack", STACKS)
def test_vllm_is_addressed_per_pod_through_a_headless_service_and_has_a_pdb(stack: str) -> None:
    run = stack_run(stack)
    service = obj(run, SERVICE, "vllm-service")
    assert service["metadata"]["name"] == "vllm"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "http", "port": run.settings.inference.port, "targetPort": "http"}]
    pdb = obj(run, PDB, "vllm-pdb")["spec"]
    assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
    assert pdb["selector"]["matchLabels"]["app.kubernetes.io/name"] == "vllm"


def test_a_pvc_model_cache_is_one_shared_claim_and_lets_the_namespace_enforce_restricted() -> None:
    from infra.offline import run_stack

    base = stack_run("prod").settings.inference.model_dump(by_alias=True)
    base["cache"] = {"kind": "pvc", "pvcSize": "200Gi", "storageClass": "cephfs"}
    run = run_stack("prod", overrides={"qwen-serving:inference": base})
    claim = obj(run, "kubernetes:core/v1:PersistentVolumeClaim", "vllm-model-cache")["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"]  # replicas on different hosts share it
    assert claim["resources"]["requests"]["storage"] == "200Gi" and claim["storageClassName"] == "cephfs"
    vllm = pod_spec(run, DEPLOYMENT, "vllm")
    volumes = {v["name"]: v for v in vllm["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "vllm-model-cache"}}
    # Without a hostPath, vLLM (non-root, read-only root) meets `restricted` like every other tier.
    assert _restricted_problems(vllm) == []
    labels = obj(run, NAMESPACE, "namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- gateway --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", STACKS)
def test_gateway_env_is_rendered_and_secrets_come_by_reference(stack: str) -> None:
    from stackspec.render.gateway_env import render_gateway_env

    run = stack_run(stack)
    s = run.settings
    gw = container(pod_spec(run, DEPLOYMENT, "gateway"), "gateway")
    plain = {e["name"]: e["value"] for e in gw["env"]}
    assert plain == render_gateway_env(
        s, backends_dns=f"vllm.{s.kubernetes.namespace}.svc.cluster.local:{s.inference.port}",
        redis_url="redis://redis:6379/0",
    )
    # The secrets are files named like the settings' variables, in pydantic-settings' secrets directory.
    mount = next(m for m in gw["volumeMounts"] if m["name"] == "secrets")
    assert mount == {"name": "secrets", "mountPath": DEFAULT_SECRETS_DIR, "readOnly": True}
    pod = pod_spec(run, DEPLOYMENT, "gateway")
    projected = next(v for v in pod["volumes"] if v["name"] == "secrets")["projected"]
    assert projected["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == pod["securityContext"][
        "runAsUser"]
    files = {item["path"]: (src["secret"]["name"], item["key"])
             for src in projected["sources"] for item in src["secret"]["items"]}
    assert files == {"GATEWAY_API_KEY_HASHES": ("gateway-api-keys", "api-key-hashes"),
                     "GATEWAY_REDIS_PASSWORD": ("redis", "password")}
    assert obj(run, SECRET, "gateway-secret")["metadata"]["name"] == "gateway-api-keys"
    assert obj(run, SECRET, "redis-secret")["metadata"]["name"] == "redis"


@pytest.mark.parametrize("stack", STACKS)
def test_gateway_deployment_service_probes_and_pdb(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    deployment = obj(run, DEPLOYMENT, "gateway")
    assert deployment["spec"]["replicas"] == s.gateway.replicas
    spec = deployment["spec"]["template"]["spec"]
    gw = container(spec, "gateway")
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["image"] == run.outputs["images"]["gateway"]
    assert gw["resources"]["requests"] == {"cpu": s.gateway.cpu_request, "memory": s.gateway.memory_request}
    # preStop keeps serving while the pod leaves the endpoints; then the drain; the grace covers both.
    assert gw["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    pre_stop = int(gw["lifecycle"]["preStop"]["exec"]["command"][1])
    # The grace is derived from the stack's timeouts: totalTimeout unless shutdownGraceSeconds is set, and the
    # gateway gets the same value as its environment.
    grace = s.gateway.shutdown_grace
    assert grace == (s.gateway.shutdown_grace_seconds if "shutdown_grace_seconds" in s.gateway.model_fields_set
                     else s.gateway.total_timeout)
    assert spec["terminationGracePeriodSeconds"] > pre_stop + s.gateway.shutdown_drain_seconds + grace
    env = {e["name"]: e.get("value") for e in gw["env"]}
    assert float(env["GATEWAY_SHUTDOWN_GRACE_SECONDS"]) == grace
    service = obj(run, SERVICE, "gateway-service")
    assert service["metadata"]["name"] == "gateway"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http"}]
    assert obj(run, PDB, "gateway-pdb")["spec"]["maxUnavailable"] == 1


def test_the_shutdown_grace_follows_the_total_timeout_unless_set() -> None:
    from tests.stacks import settings_with

    derived = settings_with("dev", gateway={"replicas": 1, "maxReplicas": 2, "totalTimeout": 300}).gateway
    assert derived.shutdown_grace == 300 and derived.tuning()["shutdown_grace_seconds"] == 300
    assert derived.termination_grace_seconds == 10 + math.ceil(derived.shutdown_drain_seconds + 300) + 10
    assert "grace 300 s (= gateway.totalTimeout)" in derived.describe_shutdown()
    assert f"terminationGracePeriodSeconds {derived.termination_grace_seconds}" in derived.describe_shutdown()
    explicit = settings_with("dev", gateway={"replicas": 1, "maxReplicas": 2, "totalTimeout": 300,
                                             "shutdownGraceSeconds": 45}).gateway
    assert explicit.shutdown_grace == 45 and "grace 45 s (gateway.shutdownGraceSeconds)" in explicit.describe_shutdown()


def test_rotating_api_keys_rolls_the_gateway_pods() -> None:
    """Keys reach the gateway as env from a Secret (read at start only): the pod template carries a hash of
    the Secret's content, so revoking a key changes the template and the Deployment rolls."""
    from infra.offline import run_stack

    def template_hash(hashes: str) -> str:
        run = run_stack("staging", overrides={f"{PROJECT}:apiKeyHashes": hashes})
        annotations = obj(run, DEPLOYMENT, "gateway")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["qwen-serving.io/config-hash"])

    one, two = "a" * 64, "b" * 64
    both = template_hash(f'{{"{one}": "alice", "{two}": "bob"}}')
    revoked = template_hash(f'{{"{one}": "alice"}}')
    assert both != revoked
    assert template_hash(f'{{"{two}": "bob", "{one}": "alice"}}') == both  # same keys, same pods


def test_gateway_processes_per_pod_reach_the_deployment_with_a_shared_metrics_dir() -> None:
    """gateway.processes (default: one per core of cpuRequest) is the Deployment's GATEWAY_PROCESSES; with more
    than one, the pod's processes share their metrics in a memory-backed emptyDir named by
    PROMETHEUS_MULTIPROC_DIR; with one there is nothing to share."""
    from infra.offline import run_stack
    from tests.stacks import stack_sections

    def gateway_pod(**gateway: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        section = {**stack_sections("staging").get("gateway", {}), **gateway}
        run = run_stack("staging", overrides={f"{PROJECT}:gateway": section})
        spec = obj(run, DEPLOYMENT, "gateway")["spec"]["template"]["spec"]
        return spec, container(spec, "gateway")

    def env(c: dict[str, Any]) -> dict[str, Any]:
        return {e["name"]: e.get("value") for e in c["env"]}

    spec, gw = gateway_pod(cpuRequest="2")  # derived: one process per core
    assert env(gw)["GATEWAY_PROCESSES"] == "2" and float(env(gw)["GATEWAY_CPU_CORES"]) == 2
    metrics_dir = env(gw)["PROMETHEUS_MULTIPROC_DIR"]
    volume = next(v for v in spec["volumes"] if v["name"] == "metrics")
    assert volume["emptyDir"]["medium"] == "Memory"
    assert {"name": "metrics", "mountPath": metrics_dir} in gw["volumeMounts"]

    _, three = gateway_pod(cpuRequest="2500m")  # 2.5 cores: three loops keep them busy
    assert env(three)["GATEWAY_PROCESSES"] == "3"
    spec, one = gateway_pod(cpuRequest="2", processes=1)  # set: the setting wins
    assert env(one)["GATEWAY_PROCESSES"] == "1"
    assert "PROMETHEUS_MULTIPROC_DIR" not in env(one) and all(v["name"] != "metrics" for v in spec["volumes"])


def test_more_gateway_processes_than_cores_is_refused_naming_both_keys() -> None:
    from stackspec.settings import SettingsError
    from tests.stacks import settings_with

    with pytest.raises(SettingsError) as err:
        settings_with("staging", gateway={"cpuRequest": "1", "processes": 2})
    message = str(err.value)
    assert f"{PROJECT}:gateway.processes / {PROJECT}:gateway.cpuRequest" in message
    assert "raise the CPU request or lower the processes" in message


# --- edge -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", STACKS)
def test_edge_serves_the_rendered_nginx_conf_from_a_configmap(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    conf = obj(run, CONFIG_MAP, "edge-config")["data"]["nginx.conf"]
    ns = s.kubernetes.namespace
    assert conf == render_nginx_conf(s, gateway_upstreams=(f"gateway.{ns}.svc.cluster.local:8080",))
    spec = pod_spec(run, DEPLOYMENT, "edge")
    nginx = container(spec, "nginx")
    assert nginx["command"] == ["nginx", "-c", "/etc/nginx/qwen/nginx.conf"]
    assert nginx["image"] == run.outputs["images"]["edge"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "edge-nginx"
    assert ("tls" in volumes) == s.edge.tls.enabled
    if s.edge.tls.enabled:
        assert volumes["tls"]["secret"]["secretName"] == s.edge.tls.secret_name
    exporter = container(spec, "nginx-exporter")
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 9113}]
    assert "127.0.0.1:8080/nginx_status" in exporter["args"][0]


@pytest.mark.parametrize("stack", STACKS)
def test_edge_service_type_ports_and_pdb_follow_settings(stack: str) -> None:
    run = stack_run(stack)
    edge = run.settings.edge
    service = obj(run, SERVICE, "edge-service")["spec"]
    assert service["type"] == edge.service_type
    ports = {p["name"]: p for p in service["ports"]}
    assert set(ports) == ({"http", "metrics", "https"} if edge.tls.enabled else {"http", "metrics"})
    if edge.node_port is not None:
        assert ports["https" if edge.tls.enabled else "http"]["nodePort"] == edge.node_port
    assert service.get("loadBalancerIP") == edge.load_balancer_ip
    assert service["externalTrafficPolicy"] == ("Local" if edge.service_type == "LoadBalancer" else "Cluster")
    assert obj(run, DEPLOYMENT, "edge")["spec"]["replicas"] == edge.replicas
    assert obj(run, PDB, "edge-pdb")["spec"]["maxUnavailable"] == 1


# --- redis ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stack", STACKS)
def test_redis_is_a_stateful_set_with_aof_on_a_pvc_and_the_password_from_the_secret(stack: str) -> None:
    run = stack_run(stack)
    s = run.settings
    sts = obj(run, STATEFUL_SET, "redis")["spec"]
    claim = sts["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == s.redis.storage_size
    assert claim.get("storageClassName") == s.redis.storage_class
    conf = obj(run, CONFIG_MAP, "redis-config")["data"]["redis.conf"]
    assert conf == render_redis_conf(s, port=6379, bind="0.0.0.0", data_dir="/data",
                                     password_file_include="/var/run/secrets/redis/redis-secrets.conf")
    server = container(sts["template"]["spec"], "redis")
    # The password is in no argument and no env var: redis.conf includes it from the mounted Secret.
    assert server["args"] == ["/etc/redis/redis.conf"] and "env" not in server
    secrets = next(v for v in sts["template"]["spec"]["volumes"] if v["name"] == "secrets")["secret"]
    assert secrets["secretName"] == "redis" and secrets["defaultMode"] == 0o440
    assert {i["key"] for i in secrets["items"]} == {"password", "redis-secrets.conf", "exporter-passwords.json"}
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in server["volumeMounts"]}
    assert mounts["/var/run/secrets/redis"] is True
    if s.redis.replication is None:
        assert set(mounts) == {"/data", "/etc/redis", "/var/run/secrets/redis"}
    else:  # tests/program/test_replication.py looks at the replication link in detail
        assert set(mounts) == {"/data", "/etc/redis", "/etc/redis/tls", "/var/run/secrets/redis"}
    exporter = container(sts["template"]["spec"], "redis-exporter")
    assert exporter["args"] == ["--redis.password-file=/var/run/secrets/redis/exporter-passwords.json"]
    assert [e["name"] for e in exporter["env"]] == ["REDIS_ADDR"]
    assert 'REDISCLI_AUTH="$(cat /var/run/secrets/redis/password)"' in server["readinessProbe"]["exec"]["command"][-1]
    assert server["readinessProbe"]["exec"]["command"][-1].endswith("grep -q PONG")
    ports = {p["name"]: p["port"] for p in obj(run, SERVICE, "redis-service")["spec"]["ports"]}
    assert ports == {"redis": 6379, "metrics": 9121}
    assert ("replicaof" in conf) == (s.site.role == "standby")


# --- GPU pool and images --------------------------------------------------------------------------
@pytest.mark.parametrize("stack", STACKS)
def test_gpu_hosts_are_labelled_and_tainted_and_the_charts_are_pinned(stack: str) -> None:
    run = stack_run(stack)
    pool = run.settings.gpu_pool
    patches = run.of_type("kubernetes:core/v1:NodePatch")
    assert sorted(p.inputs["metadata"]["name"] for p in patches) == sorted(h.name for h in pool.hosts)
    for patch in patches:
        assert patch.inputs["metadata"]["labels"][pool.node_label] == "true"
        assert patch.inputs["spec"]["taints"] == [{"key": pool.taint_key, "value": "present", "effect": "NoSchedule"}]
    runtime = obj(run, "kubernetes:node.k8s.io/v1:RuntimeClass", "nvidia-runtime-class")
    assert runtime["handler"] == "nvidia" and runtime["metadata"]["name"] == "nvidia"
    releases = {r.name: r.inputs for r in run.of_type(RELEASE)}
    plugin, dcgm = releases["nvidia-device-plugin"], releases["dcgm-exporter"]
    assert plugin["version"] == pool.device_plugin_chart_version
    assert dcgm["version"] == pool.dcgm_exporter_chart_version
    for release in (plugin, dcgm):
        assert release["repositoryOpts"]["repo"].startswith("https://nvidia.github.io/")
        assert release["values"]["nodeSelector"] == {pool.node_label: "true"}
        assert release["values"]["tolerations"][0]["key"] == pool.taint_key


@pytest.mark.parametrize("stack", STACKS)
def test_images_are_built_from_pinned_bases_and_pushed_per_settings(stack: str) -> None:
    run = stack_run(stack)
    images = run.settings.images
    built = {r.name: r.inputs for r in run.of_type(IMAGE)}
    backup = {"backup-image"} if run.settings.redis.backup else set()
    assert set(built) == {"gateway-image", "edge-image"} | backup
    assert built["gateway-image"]["build"]["args"]["PYTHON_BASE"] == images.python_base
    if backup:
        assert built["backup-image"]["build"]["args"] == {"PYTHON_BASE": images.python_base, "WHEELS": BACKUP_WHEELS}
        assert built["backup-image"]["build"]["dockerfile"].endswith("dr/Dockerfile")
    assert built["edge-image"]["build"]["args"] == {"NGINX_BASE": images.nginx_base}
    for inputs in built.values():
        assert inputs["skipPush"] is (not images.push)
        assert inputs["imageName"].startswith(images.registry + "/")


# --- security -------------------------------------------------------------------------------------
def _restricted_problems(spec: dict[str, Any]) -> list[str]:
    problems = []
    pod = spec.get("securityContext") or {}
    if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("pod seccomp")
    for c in spec["containers"]:
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: drop ALL")
        if not (sc.get("runAsNonRoot") or pod.get("runAsNonRoot")):
            problems.append(f"{c['name']}: runAsNonRoot")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem")
        if not c.get("resources", {}).get("requests") or not c.get("resources", {}).get("limits"):
            problems.append(f"{c['name']}: resources")
    if any("hostPath" in v for v in spec.get("volumes", [])):
        problems.append("hostPath volume")
    return problems


@pytest.mark.parametrize("stack", STACKS)
def test_gateway_edge_and_redis_meet_pod_security_restricted(stack: str) -> None:
    run = stack_run(stack)
    for type_, name in ((DEPLOYMENT, "gateway"), (DEPLOYMENT, "edge"), (STATEFUL_SET, "redis")):
        spec = pod_spec(run, type_, name)
        assert _restricted_problems(spec) == [], name
        assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("stack", STACKS)
def test_the_namespace_enforces_what_vllm_needs_and_audits_restricted(stack: str) -> None:
    run = stack_run(stack)
    labels = obj(run, NAMESPACE, "namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == pod_security_level(run.settings)
    assert labels["pod-security.kubernetes.io/audit"] == labels["pod-security.kubernetes.io/warn"] == "restricted"
    vllm = container(pod_spec(run, DEPLOYMENT, "vllm"), "vllm")["securityContext"]
    assert vllm["allowPrivilegeEscalation"] is False and vllm["capabilities"]["drop"] == ["ALL"]
    assert not vllm.get("privileged")


def _walk_plain(value: Any, is_secret: Any) -> list[str]:
    """Every string in `value` that is NOT inside a secret-wrapped input."""
    if is_secret(value):
        return []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_walk_plain(v, is_secret)]]
    if isinstance(value, list):
        return [s for v in value for s in _walk_plain(v, is_secret)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_never_appear_in_plain_inputs(stack: str) -> None:
    import hashlib
    import json

    from infra.offline import SECRET_PLACEHOLDERS, is_secret

    run = stack_run(stack)
    hashes = json.loads(SECRET_PLACEHOLDERS["apiKeyHashes"])
    generated = "offline-" + hashlib.sha256(b"redis-password").hexdigest()[:24]  # the mock's RandomPassword
    needles = [*hashes, generated, SECRET_PLACEHOLDERS["redisPassword"]]
    for r in run.resources:
        for text in _walk_plain(r.inputs, is_secret):
            for needle in needles:
                assert needle not in text, f"a secret is in plain inputs of {r.type} {r.name}"
    for name in ("gateway-secret", "redis-secret"):
        assert is_secret(run.one(SECRET, name).inputs["stringData"]), name
    api_keys = json.loads(obj(run, SECRET, "gateway-secret")["stringData"]["api-key-hashes"])
    assert api_keys == hashes  # the unwrapped value is what the gateway reads


def test_startup_budget_drives_the_probe() -> None:
    """Changing the setting changes the probe (the assertion above is not a coincidence of defaults)."""
    from infra.offline import run_stack

    base = stack_run("dev").settings.inference.model_dump(by_alias=True)
    run = run_stack("dev", overrides={"qwen-serving:inference": base | {"startupBudgetSeconds": 1200}})
    startup = container(pod_spec(run, DEPLOYMENT, "vllm"), "vllm")["startupProbe"]
    assert startup["failureThreshold"] == math.ceil(1200 / startup["periodSeconds"])


def test_redis_password_is_generated_per_site_unless_set_and_a_standby_must_set_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infra.offline import SECRET_PLACEHOLDERS, is_secret, run_stack
    from stackspec.settings import SettingsError

    run = stack_run("prod")  # the harness sets redisPassword: it is used as given
    assert obj(run, SECRET, "redis-secret")["stringData"]["password"] == SECRET_PLACEHOLDERS["redisPassword"]
    assert not run.of_type("random:index/randomPassword:RandomPassword")

    monkeypatch.delitem(SECRET_PLACEHOLDERS, "redisPassword")
    generated = run_stack("prod")
    assert [r.name for r in generated.of_type("random:index/randomPassword:RandomPassword")] == ["redis-password"]
    assert is_secret(generated.one(SECRET, "redis-secret").inputs["stringData"])
    with pytest.raises(SettingsError, match=r"qwen-serving:redisPassword"):
        run_stack("prod-dr")
