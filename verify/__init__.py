"""`make verify`: testinfra suites that prove the hosts and pods are what a stack declared.

    test_local.py  the local stack (default): Nginx's effective SSE settings, Redis auth and persistence, users
    test_hosts.py  a stack's GPU hosts over ssh: driver, GPUs, container toolkit, kubelet, model cache
    test_pods.py   a stack's pods over kubectl: NCCL, /dev/shm, non-root, Nginx's SSE settings, Redis

Expected values come from the stack settings (verify/expect.py); the host and pod suites are parametrised
from every site stack (or `--stack`), so `pytest --collect-only verify/` lists each stack's checks.
"""
