"""Redis backups to S3-compatible object storage, the model manifest, and restore into an empty Redis.

    python -m dr.backup snapshot  --redis-url URL --endpoint E --bucket B --site S [--model-dir D ...]
    python -m dr.backup manifest  --model-dir D --model-name N --endpoint E --bucket B --site S
    python -m dr.backup list      --endpoint E --bucket B --site S
    python -m dr.backup restore   --redis-url URL --endpoint E --bucket B --site S [--snapshot STAMP] [--force]

(`python -m dr backup|restore|snapshots --stack <stack> ...` fills endpoint, bucket, prefix, site and retention
from a stack file.) Objects: `<prefix>/<site>/<UTC stamp>.rdb` and, beside it, `<stamp>.manifest.json`.

A leaf: the standard library and boto3 only, so it runs in the backup image (dr/Dockerfile) that the
Redis tier's CronJob uses (infra/components/redis.py).

**Snapshot: the replication protocol (`SYNC`), what `redis-cli --rdb` does.** The server forks and writes a
point-in-time RDB of every database, then streams it to us; nothing on the server is changed and no file of
the server's is read, so it works from another pod, through the password (and ACL user), over TLS, against a
primary or a replica alike. BGSAVE would need a shared volume with the Redis pod to fetch dump.rdb; `redis-cli
--rdb` would need redis-cli in the image. `REPLCONF rdb-only 1` first tells a Redis >= 7.0 that this is a
one-off fetch (no replication stream after it). No `capa eof` is announced, so the server writes the RDB to its
data dir and sends it with its length (a diskless transfer would wait `repl-diskless-sync-delay` first).

**Restore: DUMP/RESTORE through a private redis-server.** The snapshot is loaded by a throwaway `redis-server`
(unix socket only, no TCP port, no persistence) and every key is copied into the target with `DUMP` +
`RESTORE key <remaining ttl> <payload>` — byte-for-byte values, types and TTLs, with the target kept up. Writing
the RDB into the target's data dir and restarting does not work here: the site's Redis runs with
`appendonly yes`, and a Redis with an AOF loads the AOF and ignores dump.rdb. RESTORE goes through the target's
AOF (and on to its replicas) like any write. The target must be empty (a restore merges nothing) unless
`--force`, and must be a primary (a replica refuses writes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config

STAMP = "%Y%m%dT%H%M%SZ"
RDB_SUFFIX = ".rdb"
MANIFEST_SUFFIX = ".manifest.json"
CHUNK = 1024 * 1024
RESTORE_BATCH = 500  # keys per pipelined round trip


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says what to do."""


class RedisReplyError(BackupError):
    """Redis answered a command with an error."""


# --- a minimal RESP2 client (the replication stream needs the raw socket; redis-py has no SYNC) ----------------
@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    unix_socket: str | None = None

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None) -> RedisTarget:
        """`redis://[user[:password]@]host[:port][/db]`, `rediss://` for TLS, `unix:///path/to/socket`.
        An explicit `password` (a file's content) wins over one in the URL."""
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise BackupError(f"--redis-url {url!r}: use redis://host:port/db, rediss://... (TLS) or unix:///path")
        db = int(parts.path.strip("/") or 0) if parts.scheme != "unix" else 0
        return cls(
            host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db,
            username=unquote(parts.username) if parts.username else None,
            password=password if password is not None else (unquote(parts.password) if parts.password else None),
            tls=parts.scheme == "rediss", ca_file=ca_file, cert_file=cert_file, key_file=key_file,
            unix_socket=parts.path if parts.scheme == "unix" else None,
        )

    def describe(self) -> str:
        return self.unix_socket or f"{self.host}:{self.port}"


class Resp:
    """One connection, RESP2: commands as arrays of bulk strings, replies parsed (errors returned as
    RedisReplyError instances by `read`, raised by `call`)."""

    def __init__(self, target: RedisTarget, *, timeout: float = 30.0) -> None:
        self.target = target
        sock: socket.socket
        try:
            if target.unix_socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(target.unix_socket)
            else:
                sock = socket.create_connection((target.host, target.port), timeout=timeout)
        except OSError as e:
            raise BackupError(f"cannot connect to Redis at {target.describe()}: {e}") from e
        if target.tls:
            context = ssl.create_default_context(cafile=target.ca_file)
            if target.cert_file:
                context.load_cert_chain(target.cert_file, target.key_file)
            sock = context.wrap_socket(sock, server_hostname=target.host)
        self.sock = sock
        self.file = cast(IO[bytes], sock.makefile("rb", buffering=CHUNK))
        if target.password is not None:
            auth = [target.username, target.password] if target.username else [target.password]
            self.call("AUTH", *auth)
        if target.db:
            self.call("SELECT", target.db)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def encode(*args: str | bytes | int) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def send(self, *commands: Sequence[str | bytes | int]) -> None:
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))

    def _line(self) -> bytes:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise BackupError(f"Redis at {self.target.describe()} closed the connection")
        return line[:-2]

    def read(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise BackupError(f"unexpected reply from Redis: {line[:80]!r}")

    def call(self, *args: str | bytes | int) -> Any:
        self.send(args)
        reply = self.read()
        if isinstance(reply, RedisReplyError):
            raise RedisReplyError(f"{args[0]!s}: {reply} (Redis at {self.target.describe()})")
        return reply

    def keyspace(self) -> dict[int, int]:
        """db index -> number of keys, from INFO keyspace."""
        text = self.call("INFO", "keyspace").decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("db") and ":" in line:
                name, stats = line.split(":", 1)
                fields = dict(kv.split("=", 1) for kv in stats.split(","))
                found[int(name[2:])] = int(fields["keys"])
        return found

    def fetch_rdb(self, out: IO[bytes]) -> tuple[int, str]:
        """A point-in-time RDB of the whole server through SYNC; writes it to `out`, returns (bytes, sha256)."""
        self.send(("REPLCONF", "rdb-only", "1"))
        self.read()  # an error here only means a Redis older than 7.0: it streams the RDB all the same
        self.send(("SYNC",))
        while True:  # newlines are keep-alives while the server forks and writes the RDB
            line = self.file.readline()
            if not line:
                raise BackupError(f"Redis at {self.target.describe()} closed the connection during SYNC")
            if line.strip():
                break
        if line.startswith(b"-"):
            raise BackupError(f"SYNC refused by Redis at {self.target.describe()}: {line[1:].decode().strip()} "
                              "(the backup user needs the `sync` command, e.g. the default user)")
        if not line.startswith(b"$") or line.startswith(b"$EOF:"):
            raise BackupError(f"unexpected SYNC reply {line[:60]!r}: expected a bulk RDB payload")
        left = int(line[1:].strip())
        size, digest = left, hashlib.sha256()
        first = True
        while left:
            chunk = self.file.read(min(CHUNK, left))
            if not chunk:
                raise BackupError(f"the RDB stream from {self.target.describe()} ended {left} bytes early")
            if first and not chunk.startswith(b"REDIS"):
                raise BackupError("the SYNC payload is not an RDB file (no REDIS magic)")
            first = False
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        return size, digest.hexdigest()


# --- object storage ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Storage:
    endpoint: str
    bucket: str
    prefix: str
    site: str
    region: str = "us-east-1"

    def client(self) -> Any:
        # Credentials: boto3's chain (AWS_SHARED_CREDENTIALS_FILE in the CronJob: a mounted Secret file).
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}))

    @property
    def folder(self) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), self.site) if p) + "/"

    def key(self, stamp: str, suffix: str) -> str:
        return f"{self.folder}{stamp}{suffix}"


@dataclass(frozen=True)
class Snapshot:
    stamp: str
    key: str
    size: int
    manifest_key: str | None = None

    @property
    def taken(self) -> dt.datetime:
        return parse_stamp(self.stamp)


def stamp_of(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(STAMP)


def parse_stamp(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp, STAMP).replace(tzinfo=dt.UTC)


def _objects(client: Any, storage: Storage) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=storage.folder):
        yield from page.get("Contents") or []


def list_snapshots(storage: Storage, client: Any | None = None) -> list[Snapshot]:
    """The site's snapshots, oldest first (names that are not `<stamp>.rdb` are left alone)."""
    client = client or storage.client()
    rdbs: dict[str, tuple[str, int]] = {}
    manifests: set[str] = set()
    for obj in _objects(client, storage):
        name = obj["Key"][len(storage.folder):]
        for suffix in (RDB_SUFFIX, MANIFEST_SUFFIX):
            stamp = name.removesuffix(suffix)
            if stamp != name and "/" not in stamp and _is_stamp(stamp):
                if suffix == RDB_SUFFIX:
                    rdbs[stamp] = (obj["Key"], int(obj["Size"]))
                else:
                    manifests.add(stamp)
                break
    return [Snapshot(stamp, key, size, storage.key(stamp, MANIFEST_SUFFIX) if stamp in manifests else None)
            for stamp, (key, size) in sorted(rdbs.items())]


def _is_stamp(text: str) -> bool:
    try:
        parse_stamp(text)
    except ValueError:
        return False
    return True


def prune(storage: Storage, retention_days: int, *, now: dt.datetime, client: Any | None = None) -> list[str]:
    """Delete the snapshots (and their manifests) older than `retention_days`; the newest snapshot is always
    kept, however old (a site whose backups stopped still has its last one). Returns the deleted keys."""
    client = client or storage.client()
    snapshots = list_snapshots(storage, client)
    cutoff = now - dt.timedelta(days=retention_days)
    doomed = [s for s in snapshots[:-1] if s.taken < cutoff]
    keys = [k for s in doomed for k in (s.key, s.manifest_key) if k]
    for start in range(0, len(keys), 1000):
        batch = keys[start:start + 1000]
        reply = client.delete_objects(Bucket=storage.bucket,
                                      Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        if reply.get("Errors"):
            raise BackupError(f"could not delete old snapshots: {reply['Errors'][:3]}")
    return keys


# --- the model manifest ------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(model_dir: Path, *, name: str, revision: str | None, site: str,
                   now: dt.datetime) -> dict[str, Any]:
    """Which model files a site serves: every regular file under the cache (sorted, relative paths), with
    its size and sha256. Symbolic links (the Hugging Face cache's snapshots/ -> blobs/) are listed with
    the file they resolve to, so a snapshot directory's manifest shows real content."""
    if not model_dir.is_dir():
        raise BackupError(f"--model-dir {model_dir} is not a directory (the model cache: inference.cache)")
    files = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        files.append({"path": rel, "size": path.stat().st_size, "sha256": file_sha256(path)})
    return {"model": name, "revision": revision, "site": site, "taken": stamp_of(now),
            "files": files, "total_bytes": sum(f["size"] for f in files)}


def upload_manifest(storage: Storage, manifest: dict[str, Any], stamp: str, client: Any | None = None) -> str:
    client = client or storage.client()
    key = storage.key(stamp, MANIFEST_SUFFIX)
    client.put_object(Bucket=storage.bucket, Key=key, Body=json.dumps(manifest, indent=2).encode(),
                      ContentType="application/json")
    return key


# --- snapshot ------------------------------------------------------------------------------------------------
@dataclass
class SnapshotResult:
    key: str
    size: int
    sha256: str
    seconds: float
    manifest_key: str | None = None
    pruned: list[str] = field(default_factory=list)


def snapshot(target: RedisTarget, storage: Storage, *, retention_days: int, now: dt.datetime | None = None,
             model_dir: Path | None = None, model_name: str | None = None, model_revision: str | None = None,
             workdir: Path | None = None) -> SnapshotResult:
    """Fetch an RDB of the whole server, upload it (sha256 in the object's metadata), record the model
    manifest beside it when `model_dir` is given, then prune beyond the retention."""
    started = time.monotonic()
    now = now or dt.datetime.now(dt.UTC)
    stamp = stamp_of(now)
    client = storage.client()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / f"{stamp}{RDB_SUFFIX}"
        with Resp(target, timeout=120) as conn, path.open("wb") as out:
            size, sha = conn.fetch_rdb(out)
        key = storage.key(stamp, RDB_SUFFIX)
        client.upload_file(str(path), storage.bucket, key, ExtraArgs={"Metadata": {"sha256": sha}})
    manifest_key = None
    if model_dir is not None:
        manifest = build_manifest(model_dir, name=model_name or model_dir.name, revision=model_revision,
                                  site=storage.site, now=now)
        manifest_key = upload_manifest(storage, manifest, stamp, client)
    pruned = prune(storage, retention_days, now=now, client=client)
    return SnapshotResult(key, size, sha, time.monotonic() - started, manifest_key, pruned)


# --- restore -------------------------------------------------------------------------------------------------
@dataclass
class RestoreResult:
    key: str
    keys: int
    seconds: float


def _choose(storage: Storage, wanted: str | None, client: Any) -> Snapshot:
    snapshots = list_snapshots(storage, client)
    if not snapshots:
        raise BackupError(f"no snapshot under s3://{storage.bucket}/{storage.folder}: check --bucket/--prefix/--site")
    if wanted in (None, "latest"):
        return snapshots[-1]
    for s in snapshots:
        if wanted in (s.stamp, s.key, f"{s.stamp}{RDB_SUFFIX}"):
            return s
    raise BackupError(f"no snapshot {wanted!r} under s3://{storage.bucket}/{storage.folder}; there are: "
                      f"{', '.join(s.stamp for s in snapshots[-5:])} (`list` shows all)")


def check_target(conn: Resp, *, force: bool) -> None:
    role = conn.call("ROLE")
    if role and role[0] != b"master":
        raise BackupError(f"the target Redis at {conn.target.describe()} is a read-only replica: restore into "
                          "the primary (promote this site first, README: disaster recovery)")
    keys = conn.keyspace()
    total = sum(keys.values())
    if total and not force:
        where = ", ".join(f"db{db}={n}" for db, n in sorted(keys.items()))
        raise BackupError(
            f"the target Redis at {conn.target.describe()} is not empty ({total} keys: {where}); a restore "
            "goes only into an empty Redis. Point --redis-url at a new one, or empty this one (FLUSHALL) if "
            "its data may go, or pass --force to write the snapshot over it (its keys replace same-named ones)")


class ScratchRedis:
    """The snapshot loaded by a private redis-server: unix socket only (no TCP port), no persistence."""

    def __init__(self, rdb: Path, *, program: str = "redis-server", within: float = 120.0) -> None:
        binary = shutil.which(program)
        if binary is None:
            raise BackupError(f"`{program}` is not on PATH: restore loads the snapshot with a local redis-server "
                              "(Debian: apt-get install redis-server; `make setup` installs it)")
        self.dir = rdb.parent
        self.socket = str(self.dir / "scratch.sock")
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700", "--dir", str(self.dir),
             "--dbfilename", rdb.name, "--appendonly", "no", "--save", "", "--databases", "256",
             "--logfile", str(self.dir / "scratch.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + within
        while True:  # until the RDB is loaded (PING answers LOADING meanwhile)
            if self.proc.poll() is not None:
                log = (self.dir / "scratch.log").read_text(errors="replace")[-2000:]
                raise BackupError(f"redis-server could not load the snapshot:\n{log}")
            try:
                with Resp(RedisTarget.from_url(f"unix://{self.socket}"), timeout=5) as conn:
                    conn.call("PING")
                return
            except BackupError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BackupError(f"redis-server did not load the snapshot within {within:.0f} s") from None
                time.sleep(0.05)

    def connect(self) -> Resp:
        return Resp(RedisTarget.from_url(f"unix://{self.socket}"), timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def copy_keys(source: Resp, target: Resp, *, replace: bool) -> int:
    """Every key of every database of `source` into `target` with DUMP/RESTORE (values, types and remaining
    TTLs exact), pipelined in batches. Returns the number of keys written."""
    written = 0
    for db in sorted(source.keyspace()):
        source.call("SELECT", db)
        target.call("SELECT", db)
        cursor, seen = b"0", set()
        while True:
            cursor, found = source.call("SCAN", cursor, "COUNT", RESTORE_BATCH)
            keys = [k for k in found if k not in seen]  # SCAN may return a key twice (a rehash in progress)
            seen.update(keys)
            if keys:
                source.send(*[c for k in keys for c in (("PTTL", k), ("DUMP", k))])
                replies = [source.read() for _ in range(2 * len(keys))]
                restores = []
                for i, key in enumerate(keys):
                    ttl, payload = replies[2 * i], replies[2 * i + 1]
                    if payload is None or ttl == -2:  # expired meanwhile
                        continue
                    restores.append(("RESTORE", key, max(int(ttl), 0), payload, *(["REPLACE"] if replace else [])))
                target.send(*restores)
                for command in restores:
                    reply = target.read()
                    if isinstance(reply, RedisReplyError):
                        raise BackupError(f"RESTORE {command[1]!r} into {target.target.describe()} failed: {reply}")
                written += len(restores)
            if cursor == b"0":
                break
    target.call("SELECT", target.target.db)
    return written


def restore(target: RedisTarget, storage: Storage, *, snapshot_name: str | None = None, force: bool = False,
            redis_server: str = "redis-server", workdir: Path | None = None) -> RestoreResult:
    """Bring one snapshot (the latest by default) back into an empty Redis."""
    started = time.monotonic()
    client = storage.client()
    chosen = _choose(storage, snapshot_name, client)
    with Resp(target) as conn:
        check_target(conn, force=force)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            rdb = Path(tmp) / "snapshot.rdb"
            client.download_file(storage.bucket, chosen.key, str(rdb))
            want = client.head_object(Bucket=storage.bucket, Key=chosen.key).get("Metadata", {}).get("sha256")
            if want and file_sha256(rdb) != want:
                raise BackupError(f"{chosen.key} does not match its recorded sha256: the object is damaged")
            scratch = ScratchRedis(rdb, program=redis_server)
            try:
                with scratch.connect() as source:
                    keys = copy_keys(source, conn, replace=force)
            finally:
                scratch.stop()
    return RestoreResult(chosen.key, keys, time.monotonic() - started)


# --- command line --------------------------------------------------------------------------------------------
def _read_secret(path: str | None) -> str | None:
    if path:
        return Path(path).read_text().strip()
    return os.environ.get("REDISCLI_AUTH")


def _target(args: argparse.Namespace) -> RedisTarget:
    return RedisTarget.from_url(args.redis_url, password=_read_secret(args.password_file), ca_file=args.tls_ca,
                                cert_file=args.tls_cert, key_file=args.tls_key)


def _storage(args: argparse.Namespace) -> Storage:
    return Storage(args.endpoint, args.bucket, args.prefix, args.site, args.region)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m dr.backup", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    def storage_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", required=True, help="the S3-compatible endpoint (redis.backup.endpoint)")
        p.add_argument("--bucket", required=True)
        p.add_argument("--prefix", default="qwen-serving")
        p.add_argument("--site", required=True, help="the site's name: objects go under <prefix>/<site>/")
        p.add_argument("--region", default="us-east-1")

    def redis_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--redis-url", required=True, help="redis://[user@]host:port/db or rediss:// for TLS")
        p.add_argument("--password-file", help="a file holding the password (default: $REDISCLI_AUTH)")
        p.add_argument("--tls-ca")
        p.add_argument("--tls-cert")
        p.add_argument("--tls-key")

    def model_args(p: argparse.ArgumentParser, required: bool) -> None:
        p.add_argument("--model-dir", type=Path, required=required, help="the model cache to record")
        p.add_argument("--model-name")
        p.add_argument("--model-revision")

    snap = commands.add_parser("snapshot", help="RDB of the Redis -> object storage, manifest, prune")
    redis_args(snap)
    storage_args(snap)
    snap.add_argument("--retention-days", type=int, required=True)
    model_args(snap, required=False)
    man = commands.add_parser("manifest", help="the model manifest alone -> object storage (or stdout)")
    model_args(man, required=True)
    storage_args(man)
    man.add_argument("--stdout", action="store_true", help="print it instead of uploading")
    lst = commands.add_parser("list", help="the site's snapshots, oldest first")
    storage_args(lst)
    rst = commands.add_parser("restore", help="a snapshot -> an EMPTY Redis (DUMP/RESTORE)")
    redis_args(rst)
    storage_args(rst)
    rst.add_argument("--snapshot", default="latest", help="a stamp (see list), a key, or latest")
    rst.add_argument("--force", action="store_true", help="restore into a non-empty Redis (same-named keys replaced)")
    rst.add_argument("--redis-server", default="redis-server", help="the redis-server that loads the snapshot")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "snapshot":
            result = snapshot(_target(args), _storage(args), retention_days=args.retention_days,
                              model_dir=args.model_dir, model_name=args.model_name,
                              model_revision=args.model_revision)
            print(json.dumps({"snapshot": result.key, "bytes": result.size, "sha256": result.sha256,
                              "manifest": result.manifest_key, "pruned": result.pruned,
                              "seconds": round(result.seconds, 3)}))
        elif args.command == "manifest":
            now = dt.datetime.now(dt.UTC)
            manifest = build_manifest(args.model_dir, name=args.model_name or args.model_dir.name,
                                      revision=args.model_revision, site=args.site, now=now)
            if args.stdout:
                print(json.dumps(manifest, indent=2))
            else:
                print(upload_manifest(_storage(args), manifest, stamp_of(now)))
        elif args.command == "list":
            for s in list_snapshots(_storage(args)):
                print(f"{s.stamp}  {s.size:>12} B  {s.key}{'  +manifest' if s.manifest_key else ''}")
        else:
            restored = restore(_target(args), _storage(args), snapshot_name=args.snapshot, force=args.force,
                               redis_server=args.redis_server)
            print(json.dumps({"restored": restored.key, "keys": restored.keys,
                              "seconds": round(restored.seconds, 3)}))
    except BackupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
