"""The backup image built here runs the prod CronJob's own container as the pod does: its arguments, environment
and Secret mount paths from the program under the mocks (only the addresses swapped for local ones), as its UID,
read-only, no capabilities. It snapshots the session stack's Redis into moto's S3 API server (tests/dr's fixture):
what `pulumi up` schedules is what this image does."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from localstack.containers import RESTRICTED
from localstack.images import image_tag
from stackspec.images import BACKUP_UID
from tests.dr.test_backup import BUCKET, ObjectStore, s3  # noqa: F401  (moto's S3 API server, this module's too)
from tests.images.conftest import ContainerFront


def _cron_container() -> tuple[dict[str, Any], dict[str, Any]]:
    from tests.program.conftest import stack_run  # the mocks only when this test runs

    cron = stack_run("prod").one("kubernetes:batch/v1:CronJob", "redis-backup").inputs
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _secret_file(directory: Path, name: str, text: str) -> None:
    """A file as the kubelet mounts a Secret key: the pod's user may read it, nobody else."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    os.chown(path, BACKUP_UID, BACKUP_UID)
    path.chmod(0o400)


def test_the_backup_image_runs_the_cronjobs_container_against_real_redis_and_s3(
    front: ContainerFront, s3: ObjectStore, tmp_path: Path  # noqa: F811
) -> None:
    pod, container = _cron_container()
    assert container.get("command") is None  # the image's own entry point, as in the pod
    assert pod["securityContext"]["runAsUser"] == BACKUP_UID
    redis = front.redis
    assert redis.password
    args = list(container["args"])
    for flag, value in (("--redis-url", redis.url), ("--endpoint", s3.endpoint), ("--bucket", BUCKET)):
        args[args.index(flag) + 1] = value
    # The Secrets at the paths the manifest mounts them (read-only), with local contents.
    secret_mounts = [m for m in container["volumeMounts"] if m.get("readOnly")]
    by_path = {m["mountPath"]: tmp_path / m["name"] for m in secret_mounts}
    password_file = Path(args[args.index("--password-file") + 1])
    credentials_file = Path(next(e["value"] for e in container["env"] if e["name"] == "AWS_SHARED_CREDENTIALS_FILE"))
    _secret_file(by_path[str(password_file.parent)], password_file.name, redis.password + "\n")
    _secret_file(by_path[str(credentials_file.parent)], credentials_file.name,
                 "[default]\naws_access_key_id = backup-test\naws_secret_access_key = backup-test\n")
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    argv = ["run", "--rm", "--network", "host", "--user", f"{BACKUP_UID}:{BACKUP_UID}", *RESTRICTED]
    for path in writable:
        argv += ["--tmpfs", f"{path}:rw,nosuid,nodev,mode=1777"]
    for target, source in by_path.items():
        argv += ["--volume", f"{source}:{target}:ro"]
    for env in container["env"]:
        argv += ["--env", f"{env['name']}={env['value']}"]
    result = front.docker.run([*argv, image_tag("backup"), *args], check=False, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["bytes"] > 0 and report["snapshot"].startswith("qwen-serving/site-a/"), report
    stored = s3.client().head_object(Bucket=BUCKET, Key=report["snapshot"])
    assert stored["ContentLength"] > 0
