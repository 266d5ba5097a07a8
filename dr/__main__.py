"""`python -m dr failover|failback|drill|backup|restore ...` (the Makefile's DR targets)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    commands = ("failover", "failback", "drill")
    if not argv or argv[0] not in commands:
        print(f"usage: python -m dr {{{'|'.join(commands)}}} [options]  (--help after the command)", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "drill":
        from dr.drill import main as drill

        return drill(rest)
    from dr.automation import main as orchestrate

    return orchestrate(command, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
