"""The real `Sites` for dr/failover.py: Pulumi's Automation API for config, preview and up; `kubectl exec
redis-cli` for a site's Redis. The only module that calls Pulumi or kubectl (neither runs on the machine
that tests this: the orchestration is tested through the seam, tests/dr/test_failover.py).

    make failover TO=site-b [DRY_RUN=1] [YES=1]
    make failback [DRY_RUN=1] [YES=1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from dr.failover import GLOBAL, FailoverRefused, ReplicaStatus, Step, plan, run
from stackspec.dns import DnsSettings, global_settings_from_config, site_stack_name
from stackspec.render.redis import CLI_AUTH
from stackspec.settings import StackSettings, settings_from_config
from stackspec.stackfile import REPO, read_stack_config, stack_file, with_placeholders

GLOBAL_STACK = "global"


class PulumiSites:
    """Stacks through `pulumi.automation` (the CLI must be installed and logged in); Redis through kubectl."""

    def __init__(self, dns: DnsSettings, sites: dict[str, StackSettings]) -> None:
        self.dns, self.sites = dns, sites
        self.stack_of = {e.name: site_stack_name(e) for e in dns.sites}

    def _stack(self, name: str) -> Any:
        from pulumi import automation as auto

        return auto.select_stack(stack_name=GLOBAL_STACK if name == GLOBAL else name, work_dir=str(REPO))

    def configure(self, step: Step) -> None:
        from pulumi import automation as auto

        stack = self._stack(step.stack)
        for change in step.changes:
            if change.value is None:
                stack.remove_config(change.key, path=True)
            else:
                stack.set_config(change.key, auto.ConfigValue(value=change.value), path=True)

    def preview(self, step: Step) -> str:
        result = self._stack(step.stack).preview(on_output=print)
        return ", ".join(f"{op} {n}" for op, n in sorted(result.change_summary.items())) or "no changes"

    def up(self, step: Step) -> None:
        self._stack(step.stack).up(on_output=print)

    def _redis_cli(self, site: str, *args: str) -> str | None:
        s = self.sites[site]
        cmd = ["kubectl", "--context", s.kubernetes.context or site, "-n", s.kubernetes.namespace, "exec", "redis-0",
               "-c", "redis", "--", "sh", "-c",
               # The password is a file of the mounted redis Secret (infra/components/redis.py), not an env var.
               f'{CLI_AUTH} exec redis-cli "$@"', "redis-cli", *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def reachable(self, site: str) -> bool:
        return (self._redis_cli(site, "ping") or "").strip() == "PONG"

    def replica_status(self, site: str) -> ReplicaStatus | None:
        text = self._redis_cli(site, "info", "replication")
        if text is None:
            return None
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if info.get("role") != "slave":
            return ReplicaStatus("master", False, None)
        other = next(n for n in self.sites if n != site)
        primary = self._redis_cli(other, "info", "replication") or ""
        offsets = dict(line.split(":", 1) for line in primary.splitlines() if ":" in line)
        lag = (int(offsets["master_repl_offset"]) - int(info["slave_repl_offset"])
               if "master_repl_offset" in offsets and "slave_repl_offset" in info else None)
        return ReplicaStatus("slave", info.get("master_link_status") == "up", lag)

    def dns_active(self) -> str:
        value = self._stack(GLOBAL).get_config("qwen-serving:dns.activeSite", path=True).value
        return str(value)


def load() -> tuple[DnsSettings, dict[str, StackSettings]]:
    raw, _ = read_stack_config(stack_file(GLOBAL_STACK))
    dns = global_settings_from_config(raw, check_sites=False)
    sites = {e.name: settings_from_config(with_placeholders(read_stack_config(stack_file(site_stack_name(e)))[0]),
                                          check_secrets=False) for e in dns.sites}
    return dns, sites


def addresses(sites: dict[str, StackSettings]) -> dict[str, str]:
    """site -> its replication endpoint (what the other site's redis.replicaOf becomes)."""
    found = {}
    for name, s in sites.items():
        rep = s.redis.replication
        if rep is None or not rep.load_balancer_ip:
            raise FailoverRefused(f"site {name} has no redis.replication.loadBalancerIp; set it in its stack first")
        found[name] = f"{rep.load_balancer_ip}:{rep.port}"
    return found


def main(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m dr {command}")
    if command == "failover":
        parser.add_argument("--to", required=True, help="the site to make active, e.g. site-b")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--yes", action="store_true", help="apply each previewed step without asking")
    args = parser.parse_args(argv)
    dns, sites = load()
    # failback: back to the site that is the standby now (the original primary), once it has caught up
    to = args.to if command == "failover" else dns.standby_site
    steps = plan(dns, to, stacks={e.name: site_stack_name(e) for e in dns.sites}, addresses=addresses(sites))

    def confirm(step: Step, preview: str) -> bool:
        return args.yes or input(f"apply '{step.what}' to stack {step.stack}? [y/N] ").strip().lower() == "y"

    try:
        run(steps, PulumiSites(dns, sites), dry_run=args.dry_run, confirm=confirm,
            failback_from=dns.active_site if command == "failback" and not args.dry_run else None)
    except FailoverRefused as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    return 0
