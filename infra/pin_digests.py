"""`make pin-digests STACK=<stack>`: replace the image tags in a stack file by the digests a registry serves.

    python -m infra.pin_digests --stack prod [--dry-run]

Asks `skopeo inspect docker://<image>` (Debian's skopeo; needs the registry to be reachable and, for a
private one, `skopeo login`) for each image under `qwen-serving:images`, then rewrites only those lines
(stackspec.stackfile.pin_digests). The vLLM tag stays (it must be the pinned version); the digest follows it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

from stackspec.stackfile import image_refs, pin_digests, stack_file


def registry_digest(ref: str) -> str:
    """The digest the registry serves for `ref` (its tag; a digest already there is ignored)."""
    tagged = ref.split("@", 1)[0]
    proc = subprocess.run(["skopeo", "inspect", "--no-tags", f"docker://{tagged}"], capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo inspect {tagged}: {proc.stderr.strip()}")
    return str(json.loads(proc.stdout)["Digest"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make pin-digests", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--dry-run", action="store_true", help="print the new file instead of writing it")
    args = parser.parse_args(argv)
    if shutil.which("skopeo") is None:
        print("pin-digests: skopeo is not installed (apt-get install skopeo)", file=sys.stderr)
        return 1
    path = stack_file(args.stack)
    text = path.read_text()
    digests: dict[str, str] = {}
    for key, ref in image_refs(text).items():
        try:
            digests[ref] = registry_digest(ref)
        except RuntimeError as err:
            print(f"pin-digests: images.{key}: {err}", file=sys.stderr)
            return 1
        print(f"images.{key}: {ref.split('@', 1)[0]}@{digests[ref]}")
    pinned = pin_digests(text, digests)
    if args.dry_run:
        print(pinned)
    else:
        path.write_text(pinned)
    return 0


if __name__ == "__main__":
    sys.exit(main())
