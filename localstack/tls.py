"""Test certificates for the cross-site Redis link (mutual TLS), made with the real `openssl`.

In a cluster the certificates are a Secret (`redis.replication.tlsSecretName`: tls.crt, tls.key, ca.crt),
issued by your CA; locally one CA signs one certificate that serves both ends (server and client auth,
SAN 127.0.0.1/localhost), laid out like the Secret's mount so the rendered redis.conf finds them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from localstack.processes import ProcessError


def _openssl(*args: str, cwd: Path) -> None:
    program = shutil.which("openssl")
    if program is None:
        raise ProcessError("program 'openssl' is missing; run `make setup` (Debian package openssl)")
    result = subprocess.run([program, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProcessError(f"openssl {' '.join(args[:2])} failed:\n{result.stderr}")


def make_replication_tls(directory: Path, *, days: int = 2) -> Path:
    """A CA and a certificate signed by it in `directory` (tls.crt, tls.key, ca.crt); returns `directory`.
    Idempotent: existing files are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    if all((directory / f).is_file() for f in ("tls.crt", "tls.key", "ca.crt")):
        return directory
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
                   "keyUsage=digitalSignature,keyEncipherment\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", str(days), "-subj", "/CN=qwen-serving replication test CA", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr",
             "-subj", "/CN=localhost", cwd=directory)
    _openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "tls.crt", "-days", str(days), "-extfile", "ext.cnf", cwd=directory)
    for f in ("tls.key", "ca.key"):
        (directory / f).chmod(0o600)
    return directory
