"""`make pin-digests` rewrites only the image lines of a stack file (the registry call itself is not tested)."""

from __future__ import annotations

import pytest
import yaml

from stackspec.stackfile import image_refs, pin_digests, stack_file
from tests.stacks import SITE_STACKS

DIGEST = "sha256:" + "b" * 64


@pytest.mark.parametrize("stack", SITE_STACKS)
def test_pinning_changes_only_the_image_lines(stack: str) -> None:
    text = stack_file(stack).read_text()
    refs = image_refs(text)
    pinned = pin_digests(text, {ref: DIGEST for ref in refs.values()})
    before, after = yaml.safe_load(text), yaml.safe_load(pinned)
    images = after["config"].get("qwen-serving:images", {})
    for key, ref in refs.items():
        assert images[key] == f"{ref.split('@', 1)[0]}@{DIGEST}"
    after["config"].pop("qwen-serving:images", None)
    before["config"].pop("qwen-serving:images", None)
    assert after == before
    assert [line for line in text.splitlines() if "#" in line and "@sha256" not in line] == \
        [line for line in pinned.splitlines() if "#" in line and "@sha256" not in line]


def test_a_tag_gets_its_digest_and_an_old_digest_is_replaced() -> None:
    text = ("config:\n  qwen-serving:images:\n    registry: r.example/q  # EXAMPLE\n"
            "    vllm: vllm/vllm-openai:v0.32.0\n    nginxBase: nginx:1.27-alpine@sha256:" + "a" * 64 + "  # keep\n"
            "  qwen-serving:edge:\n    replicas: 2\n")
    refs = image_refs(text)
    assert refs == {"vllm": "vllm/vllm-openai:v0.32.0", "nginxBase": "nginx:1.27-alpine@sha256:" + "a" * 64}
    pinned = pin_digests(text, {ref: DIGEST for ref in refs.values()})
    assert f"    vllm: vllm/vllm-openai:v0.32.0@{DIGEST}\n" in pinned
    assert f"    nginxBase: nginx:1.27-alpine@{DIGEST}  # keep\n" in pinned
    assert "registry: r.example/q  # EXAMPLE" in pinned and pinned.endswith("    replicas: 2\n")


def test_a_bad_digest_is_refused() -> None:
    with pytest.raises(ValueError, match="sha256"):
        pin_digests("config:\n  qwen-serving:images:\n    vllm: v:1\n", {"v:1": "latest"})
