"""The images built here run as the manifests declare and serve: the gateway and the edge containers (built by
the package fixture with the same definitions as the Pulumi Images component) in front of the session
stack's Redis and vLLM. The e2e layer's streaming, session and bad-input checks are imported below and run
against the containers, through the edge container (this package's `endpoint` and `local_stack`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localstack.images import image_tag
from stackspec.images import BUILD_BY_NAME
from tests.e2e.test_edge_hardening import (  # noqa: F401  (collected here, on the containers)
    test_hostile_input_through_the_edge,
    test_nginx_status_is_served_to_loopback,
    test_public_healthz_answers_a_status_and_nothing_else,
)
from tests.e2e.test_openai_through_nginx import (  # noqa: F401  (collected here, on the containers)
    test_models_lists_the_served_model,
    test_non_streamed_answer,
    test_session_history_carries_over_between_requests,
    test_stream_arrives_incrementally_not_buffered,
    test_streamed_turns_are_kept_in_the_session_too,
    test_the_web_page_is_served_and_self_contained,
    test_wrong_key_is_an_openai_401_through_nginx,
)
from tests.images.conftest import ContainerFront
from tests.program.conftest import DEPLOYMENT, pod_spec, stack_run

# image -> the Deployment that runs it
DEPLOYMENTS = {"gateway": "gateway", "edge": "edge"}


def _containers(front: ContainerFront) -> list[tuple[str, str]]:
    """(image name, container name) of every container in front."""
    found = [("gateway", getattr(g.process, "container", "")) for g in front.gateways]
    found.append(("edge", getattr(front.nginx.process, "container", "")))
    assert all(name for _, name in found), found
    return found


def _inspect(front: ContainerFront, ref: str) -> dict[str, Any]:
    result: list[dict[str, Any]] = json.loads(front.docker.run(["inspect", ref]).stdout)
    return result[0]


@pytest.mark.parametrize("image", sorted(BUILD_BY_NAME))
def test_the_image_is_built_here_and_carries_no_secret(front: ContainerFront, image: str) -> None:
    config = _inspect(front, image_tag(image))["Config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    assert not {k for k in env if "PASSWORD" in k or "KEY" in k or "SECRET" in k}, env
    assert config["User"] in ("", f"{BUILD_BY_NAME[image].uid}", f"{BUILD_BY_NAME[image].uid}:"
                              f"{BUILD_BY_NAME[image].uid}"), config["User"]


def test_containers_run_as_the_manifests_uids_with_the_pods_restrictions(front: ContainerFront) -> None:
    manifests = stack_run("dev")
    for image, container in _containers(front):
        declared = pod_spec(manifests, DEPLOYMENT, DEPLOYMENTS[image])["securityContext"]
        uid = declared["runAsUser"]
        assert uid == BUILD_BY_NAME[image].uid != 0
        info = _inspect(front, container)
        assert info["Config"]["User"] == f"{uid}:{declared['runAsGroup']}"
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["Privileged"] is False
        ids = front.docker.run(["exec", container, "id", "-u"]).stdout.split()
        assert ids == [str(uid)], (container, ids)
        write = front.docker.run(["exec", container, "sh", "-c", "echo x > /probe"], check=False)
        assert write.returncode != 0 and "Read-only file system" in write.stderr, (container, write.stderr)


def test_the_edge_reads_the_rendered_conf_mounted_read_only_at_the_configmaps_path(front: ContainerFront) -> None:
    container = _containers(front)[-1][1]
    mounts = {m["Destination"]: m for m in _inspect(front, container)["Mounts"]}
    conf = mounts["/etc/nginx/qwen"]
    assert conf["RW"] is False
    assert (front.stack.root / "nginx" / "config" / "nginx.conf").read_text() == front.docker.run(
        ["exec", container, "cat", "/etc/nginx/qwen/nginx.conf"]).stdout
