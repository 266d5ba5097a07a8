"""Host checks run with pytest-testinfra. By default they target this machine and the local stack
(started here through the same code as `make up`); `--hosts=ssh://…` or `kubectl://…` points the
package checks at a real host instead."""

from tests.e2e.conftest import endpoint, local_stack  # noqa: F401  (one running stack, shared fixtures)
