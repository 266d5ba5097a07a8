"""Pulumi entry point (`main: infra/` in Pulumi.yaml).

The Python runner puts infra/ itself on sys.path, so the repository root is added to import the
`infra` and `app` packages by name.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infra.program import main

main()
