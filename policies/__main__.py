"""The CrossGuard entry point: `pulumi preview --policy-pack policies`.

Constructing a PolicyPack starts the analyzer's gRPC server, so the rules live in `rules.py` (importable and
tested in-process by tests/policies) and this file only wraps them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack

from policies.rules import POLICIES

PolicyPack(name="qwen-serving-guardrails", policies=POLICIES)
