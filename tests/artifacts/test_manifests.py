"""Every Kubernetes manifest of every stack passes strict kubernetes-validate for the stack's version."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.program.conftest import STACKS, stack_run

# Custom resources of charts the program installs: kubernetes-validate has no schema for them.
CRD_GROUPS = ("monitoring.coreos.com/", "keda.sh/")


@pytest.mark.parametrize("stack", STACKS)
def test_every_manifest_is_strictly_valid(stack: str) -> None:
    run = stack_run(stack)
    version = run.settings.kubernetes.version
    manifests = run.manifests()
    kinds = {m["kind"] for m in manifests}
    assert {"Namespace", "NetworkPolicy", "Deployment", "StatefulSet", "Service", "Secret", "ConfigMap",
            "PodDisruptionBudget", "RuntimeClass"} <= kinds
    errors = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert manifest["apiVersion"].startswith(CRD_GROUPS), manifest["apiVersion"]
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            errors.append(f"{manifest['kind']} {manifest['metadata']['name']}: {where}: {err.message}")
    assert errors == []


def test_the_validation_is_strict() -> None:
    """A misspelt field in one of our real manifests is caught (so the test above can fail)."""
    run = stack_run("prod")
    pdb = next(m for m in run.manifests() if m["kind"] == "PodDisruptionBudget")
    pdb["spec"]["maxUnavalable"] = pdb["spec"].pop("maxUnavailable")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, "1.33.0", strict=True)
