"""Host checks run with pytest-testinfra. By default they target this machine and the session's local
stack (tests/conftest.py, started through the same code as `make up`); `--hosts=ssh://…` or `kubectl://…`
points the package checks at a real host instead."""
