"""`python -m dr failover|failback|drill|snapshots|backup|restore ...` (the Makefile's DR targets).

The backup commands take `--stack <stack>` and fill what the stack file says (`redis.backup`: endpoint, bucket,
prefix, region, retention; `site.name`), then run dr/backup.py:

    python -m dr snapshots --stack prod                                   # list the site's snapshots
    python -m dr backup    --stack prod --redis-url redis://127.0.0.1:6379/0   # one snapshot now
    python -m dr restore   --stack prod --redis-url redis://127.0.0.1:6379/0 [--snapshot STAMP] [--force]

Other flags go through to `python -m dr.backup` (e.g. `--password-file`, `--model-dir`); the stack's values
come first, so a flag given again overrides it.
"""

from __future__ import annotations

import sys

BACKUP_COMMANDS = {"snapshots": "list", "backup": "snapshot", "restore": "restore"}


def backup_argv(command: str, argv: list[str]) -> list[str]:
    """`dr.backup`'s arguments for a `python -m dr <backup command> --stack <stack> ...` line."""
    from stackspec.settings import settings_from_config
    from stackspec.stackfile import read_stack_config, stack_file, with_placeholders

    if "--stack" not in argv or argv.index("--stack") + 1 >= len(argv):
        raise SystemExit(f"usage: python -m dr {command} --stack <stack> [dr.backup options]")
    at = argv.index("--stack")
    stack, rest = argv[at + 1], argv[:at] + argv[at + 2:]
    s = settings_from_config(with_placeholders(read_stack_config(stack_file(stack))[0]), check_secrets=False)
    b = s.redis.backup
    if b is None:
        raise SystemExit(f"stack {stack} has no redis.backup: nothing is backed up there")
    sub = BACKUP_COMMANDS[command]
    filled = [sub, "--endpoint", b.endpoint, "--bucket", b.bucket, "--prefix", b.prefix, "--site", s.site.name,
              "--region", b.region]
    if sub == "snapshot":
        filled += ["--retention-days", str(b.retention_days)]
    return filled + rest


def main(argv: list[str]) -> int:
    commands = ("failover", "failback", "drill", *BACKUP_COMMANDS)
    if not argv or argv[0] not in commands:
        print(f"usage: python -m dr {{{'|'.join(commands)}}} [options]  (--help after the command)", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "drill":
        from dr.drill import main as drill

        return drill(rest)
    if command in BACKUP_COMMANDS:
        from dr.backup import main as backup

        return backup(backup_argv(command, rest))
    from dr.automation import main as orchestrate

    return orchestrate(command, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
