"""Layer 2: the model manifest in the cluster — a CronJob on a GPU host, without a GPU, reading the vLLM
model cache read-only and writing the manifest to the Redis backups' object storage."""

from __future__ import annotations

from typing import Any

import pytest

from dr.backup import parser
from infra.components.model_manifest import MANIFEST_SCHEDULE
from stackspec.images import VLLM_UID
from stackspec.render.vllm_args import CACHE_MOUNT
from stackspec.settings import BACKUP_CRONJOB, MODEL_MANIFEST_CRONJOB
from tests.program.conftest import DEPLOYMENT, NETPOL, STACKS, obj, pod_spec, stack_run

CRONJOB = "kubernetes:batch/v1:CronJob"


def _cronjob(stack: str) -> dict[str, Any] | None:
    run = stack_run(stack)
    found = [r for r in run.of_type(CRONJOB) if r.name == MODEL_MANIFEST_CRONJOB]
    return obj(run, CRONJOB, MODEL_MANIFEST_CRONJOB) if found else None


@pytest.mark.parametrize("stack", STACKS)
def test_the_manifest_cronjob_exists_exactly_where_backups_do(stack: str) -> None:
    assert (_cronjob(stack) is not None) == (stack_run(stack).settings.redis.backup is not None)


@pytest.mark.parametrize("stack", [s for s in STACKS if stack_run(s).settings.redis.backup is not None])
def test_it_reads_vllms_cache_read_only_on_a_gpu_host_without_a_gpu(stack: str) -> None:
    run = stack_run(stack)
    cron = _cronjob(stack)
    assert cron is not None and cron["spec"]["schedule"] == MANIFEST_SCHEDULE
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    vllm = pod_spec(run, DEPLOYMENT, "vllm")
    assert pod["nodeSelector"] == vllm["nodeSelector"] and pod["tolerations"] == vllm["tolerations"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in str(container["resources"]) and "runtimeClassName" not in pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"] == {v["name"]: v for v in vllm["volumes"]}["model-cache"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model-cache"] == {"name": "model-cache", "mountPath": CACHE_MOUNT, "readOnly": True}
    # The cache's owner reads it (a hostPath cache is prepared owned by vLLM's UID, 0750).
    assert pod["securityContext"]["runAsUser"] == VLLM_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The storage credentials as a file from the backups' Secret; the arguments are the manifest command's.
    assert volumes["object-storage"]["secret"]["secretName"] == BACKUP_CRONJOB
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "AWS_SHARED_CREDENTIALS_FILE": f"{mounts['object-storage']['mountPath']}/credentials"}
    args = parser().parse_args(container["args"])
    b = run.settings.redis.backup
    assert b is not None
    assert (args.command, str(args.model_dir), args.model_name) == ("manifest", CACHE_MOUNT, run.settings.model.name)
    assert (args.endpoint, args.bucket, args.prefix, args.site) == (b.endpoint, b.bucket, b.prefix,
                                                                     run.settings.site.name)
    assert not args.stdout


@pytest.mark.parametrize("stack", [s for s in STACKS if stack_run(s).settings.redis.backup is not None])
def test_its_network_policy_lets_it_reach_the_storage_only(stack: str) -> None:
    policy = obj(stack_run(stack), NETPOL, f"netpol-{MODEL_MANIFEST_CRONJOB}")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == MODEL_MANIFEST_CRONJOB
    assert policy["policyTypes"] == ["Egress"]
    (rule,) = policy["egress"]
    assert [p["port"] for p in rule["ports"]] == [443]  # https://objects.example.com
