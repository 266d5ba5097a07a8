"""The DR drill (`make drill`): two sites on loopback, a kill under traffic, failover, fail back.

Each site runs the programs its stack renders — `prod` (site A, primary) and `prod-dr` (site B, standby),
read from stacks/ with secrets filled locally: Redis (its redis.conf, mutual TLS on the replication port,
the replication-only ACL user), one gateway (its environment), Nginx (its nginx.conf, HTTPS with a test
certificate). Local wiring only changes addresses: ports on 127.0.0.1, and site B's `redis.replicaOf` points
at site A's TLS port, set with the same `apply_change` the stack switch uses.

One vLLM (CPU build, the fast `tiny-qwen2` model served under the stacks' model name) is shared by both
sites' gateways: the drill is about Redis, the gateways and the DNS rule, not about vLLM, and one model
keeps it light. Its arguments come from localstack/local.yaml (a CPU cannot run the prod stack's).

The drill:
1. chats through site A (the client resolves the name the way Route53 answers: `DnsRule`), `sessions`
   sessions of `turns` turns each, `workers` at a time;
2. SIGKILLs every process of site A at a random moment while that traffic continues;
3. the client moves to site B after `failureThreshold` consecutive failed HTTPS checks of `/healthz`,
   `requestInterval` apart (scaled down: `check_interval`); then the operator's stack switch runs
   (dr/failover.py with `LocalSites`): pin DNS, promote B (REPLICAOF NO ONE, its redis.conf re-rendered
   without replicaof), demote A — deferred, A is unreachable; its config now says standby;
4. every session continues on B; site A comes back from its own data directory, rendered from its switched
   stack, so it starts as a replica of B (fencing: checked before anything talks to it); once it has caught
   up, `failback` runs the same steps towards A; every session then takes one more turn through A.

Acknowledged turn = the API answered 200. `lost_acknowledged_turns` counts turns acknowledged by A at least
1 s before the kill and missing on B; `lost_last_second` those acknowledged in the last second (the RPO
window of asynchronous replication). Turns B answers before its promotion are answered from its replica's
history but not stored (README: disaster recovery); they are reported as `unsaved_on_standby`.
`rto_seconds` = kill -> first successful answer from B. The result goes to build/drill/result.json.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import random
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis as redislib
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.inference.tiny_model import ensure_test_model
from dr.failover import GLOBAL, Change, ReplicaStatus, Step, apply_change, plan, run
from localstack.processes import free_port
from localstack.services import (
    REPO_ROOT,
    GatewayHandle,
    NginxHandle,
    RedisHandle,
    VllmHandle,
    start_gateway,
    start_nginx,
    start_redis,
    start_vllm,
)
from localstack.settings import key_hash, local_settings
from localstack.stack import WEB_ROOT, gateway_env
from localstack.tls import make_replication_tls
from stackspec.dns import DnsSettings, global_settings_from_config, site_stack_name
from stackspec.render.nginx import render_nginx_conf
from stackspec.render.redis import render_redis_conf
from stackspec.settings import PROJECT, StackSettings, settings_from_config
from stackspec.stackfile import read_stack_config, stack_file, with_placeholders

DRILL_ROOT = REPO_ROOT / "build" / "drill"
GLOBAL_STACK = "global"
TEST_MODEL = "tiny-qwen2"


@dataclass
class DrillConfig:
    root: Path = DRILL_ROOT
    sessions: int = 20
    turns: int = 4  # per session before the failback; one more after it
    workers: int = 5
    check_interval: float = 0.25  # Route53's requestInterval (10 s), scaled down
    max_tokens: int = 8
    seed: int | None = None  # the kill moment; None: random
    say: Callable[[str], None] = print


# --- the DNS rule -----------------------------------------------------------------------------------------
class DnsRule:
    """Route53 failover records, as the client sees them: the PRIMARY (the pinned active site) while its
    health check passes; the SECONDARY once the primary failed `threshold` consecutive checks and the
    secondary's passes; the primary again after `threshold` consecutive passes."""

    def __init__(self, dns: DnsSettings, urls: dict[str, str], ca: Path, interval: float) -> None:
        self.active = dns.active_site
        self.threshold = dns.failure_threshold
        self.urls, self.interval = urls, interval
        self.tls = ssl.create_default_context(cafile=str(ca))
        self.healthy = dict.fromkeys(urls, True)
        self._streak = dict.fromkeys(urls, 0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="dns-health-checks", daemon=True)

    def start(self) -> DnsRule:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def pin(self, site: str) -> None:
        with self._lock:
            self.active = site

    def answer(self) -> str:
        with self._lock:
            secondary = next(s for s in self.urls if s != self.active)
            if not self.healthy[self.active] and self.healthy[secondary]:
                return secondary
            return self.active

    def _check(self, url: str) -> bool:
        try:
            return httpx.get(f"{url}/healthz", verify=self.tls, timeout=self.interval * 2).status_code == 200
        except httpx.HTTPError:
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for site, url in self.urls.items():
                ok = self._check(url)
                with self._lock:
                    # consecutive results against the current state flip it after `threshold` of them
                    self._streak[site] = self._streak[site] + 1 if ok != self.healthy[site] else 0
                    if self._streak[site] >= self.threshold:
                        self.healthy[site], self._streak[site] = ok, 0


# --- one site ----------------------------------------------------------------------------------------------
@dataclass
class LocalSite:
    name: str
    stack: str
    raw: dict[str, Any]  # the stack's config as the CLI passes it (secrets filled)
    root: Path
    redis_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    redis: RedisHandle | None = None
    gateway: GatewayHandle | None = None
    nginx: NginxHandle | None = None

    @property
    def settings(self) -> StackSettings:
        return settings_from_config(self.raw, check_secrets=False)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def replication_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def handles(self) -> list[Any]:
        return [h for h in (self.nginx, self.gateway, self.redis) if h is not None]

    def client(self, password: str) -> redislib.Redis:
        # No retries: a dead site answers "unreachable" at once (redis-py would back off for seconds).
        return redislib.Redis(port=self.redis_port, password=password, socket_timeout=2, decode_responses=True,
                              retry=Retry(NoBackoff(), 0))


@dataclass
class Turn:
    session: str
    number: int
    site: str
    sent: float
    acked: float
    content: str
    on_standby: bool  # B answered while still a replica (not promoted yet)


@dataclass
class DrillResult:
    sessions: int
    acknowledged_turns: int
    lost_acknowledged_turns: int
    lost_last_second: int
    rto_seconds: float
    failback_ok: bool
    unsaved_on_standby: int = 0
    lost_after_promotion: int = 0
    dns_switch_seconds: float = 0.0
    promotion_seconds: float = 0.0
    a_returned_as_replica: bool = False
    deferred_steps: list[str] = field(default_factory=list)
    runtime_seconds: float = 0.0
    seed: int = 0

    def table(self) -> str:
        rows = [(k, v) for k, v in asdict(self).items() if k != "deferred_steps"]
        width = max(len(k) for k, _ in rows)
        lines = [f"{'field':<{width}}  value", f"{'-' * width}  -----"]
        lines += [f"{k:<{width}}  {round(v, 2) if isinstance(v, float) else v}" for k, v in rows]
        return "\n".join(lines)


# --- the seam, locally -----------------------------------------------------------------------------------
class LocalSites:
    """dr/failover.py's `Sites` over the local processes: config changes re-render the site's files; `up`
    applies them as the cluster would converge (a promoted Redis stops replicating, a demoted one follows)."""

    def __init__(self, drill: Drill) -> None:
        self.drill = drill

    def _site(self, stack: str) -> LocalSite:
        return next(s for s in self.drill.sites.values() if s.stack == stack)

    def configure(self, step: Step) -> None:
        for change in step.changes:
            if change.stack == GLOBAL:
                self.drill.global_raw = apply_change(self.drill.global_raw, change)
            else:
                site = self._site(change.stack)
                site.raw = apply_change(site.raw, change)

    def preview(self, step: Step) -> str:
        if step.stack == GLOBAL:
            return f"~ Route53 records: {self.drill.dns_settings.active_site} becomes PRIMARY"
        site = self._site(step.stack)
        old = (site.root / "redis" / "redis.conf").read_text().splitlines()
        new = self.drill.redis_conf(site).splitlines()
        changed = [d for d in difflib.unified_diff(old, new, lineterm="", n=0) if d[:1] in "+-" and d[:3] not in
                   ("+++", "---")]
        return f"~ ConfigMap redis-config ({', '.join(changed) or 'no change'})"

    def up(self, step: Step) -> None:
        if step.stack == GLOBAL:
            assert self.drill.dns is not None
            self.drill.dns.pin(self.drill.dns_settings.active_site)
            return
        site = self._site(step.stack)
        (site.root / "redis" / "redis.conf").write_text(self.drill.redis_conf(site))
        client = site.client(self.drill.redis_password)
        s = site.settings
        if s.site.role == "primary":
            client.execute_command("REPLICAOF", "NO", "ONE")
            if self.drill.promoted_at is None:
                self.drill.promoted_at = time.monotonic()
        else:
            host, _, port = (s.redis.replica_of or "").rpartition(":")
            assert s.redis.replication is not None
            client.config_set("masteruser", s.redis.replication.user)
            client.execute_command("REPLICAOF", host, port)

    def reachable(self, site: str) -> bool:
        try:
            return bool(self.drill.sites[site].client(self.drill.redis_password).ping())
        except (redislib.RedisError, OSError):
            return False

    def replica_status(self, site: str) -> ReplicaStatus | None:
        if not self.reachable(site):
            return None
        info = self.drill.sites[site].client(self.drill.redis_password).info("replication")
        if info["role"] != "slave":
            return ReplicaStatus("master", False, None)
        link_up = info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
        lag = None
        other = next(s for s in self.drill.sites.values() if s.name != site)
        with contextlib.suppress(redislib.RedisError, OSError):
            primary = other.client(self.drill.redis_password).info("replication")
            lag = int(primary["master_repl_offset"]) - int(info["slave_repl_offset"])
        return ReplicaStatus("slave", link_up, lag)

    def dns_active(self) -> str:
        assert self.drill.dns is not None
        return self.drill.dns.active


# --- the drill -------------------------------------------------------------------------------------------
class Drill:
    def __init__(self, config: DrillConfig | None = None) -> None:
        self.config = config or DrillConfig()
        self.root = self.config.root.resolve()
        self.redis_password = secrets.token_hex(16)
        self.replication_password = secrets.token_hex(16)
        self.api_key = "sk-drill-" + secrets.token_urlsafe(16)
        self.global_raw, _ = read_stack_config(stack_file(GLOBAL_STACK))
        dns = self.dns_settings
        self.sites = {
            endpoint.name: LocalSite(endpoint.name, site_stack_name(endpoint),
                                     with_placeholders(read_stack_config(stack_file(site_stack_name(endpoint)))[0]),
                                     self.root / endpoint.name)
            for endpoint in dns.sites
        }
        self.primary, self.standby = dns.active_site, dns.standby_site
        a, b = self.sites[self.primary], self.sites[self.standby]
        b.raw = apply_change(b.raw, Change(b.stack, f"{PROJECT}:redis.replicaOf", a.replication_address))
        self.tls_dir = make_replication_tls(self.root / "tls")
        self.vllm: VllmHandle | None = None
        self.dns: DnsRule | None = None
        self.turns: list[Turn] = []
        self.failures = 0
        self._lock = threading.Lock()
        self.promoted_at: float | None = None
        self.served = a.settings.model.served_name  # the stacks' model name: the gateways ask for it

    @property
    def dns_settings(self) -> DnsSettings:
        return global_settings_from_config(self.global_raw, check_sites=False)

    def say(self, line: str) -> None:
        self.config.say(f"[drill] {line}")

    def redis_conf(self, site: LocalSite) -> str:
        return render_redis_conf(site.settings, port=site.redis_port, bind="127.0.0.1",
                                 data_dir=str(site.root / "redis" / "data"),
                                 password_file_include=str(site.root / "redis" / "redis-secret.conf"),
                                 tls_dir=str(self.tls_dir), tls_port=site.tls_port)

    # --- processes ---------------------------------------------------------------------------------
    def start_edge(self, site: LocalSite) -> None:
        assert self.vllm is not None and site.redis is not None
        s = site.settings
        env = gateway_env(s, [self.vllm], site.redis, api_key_hashes={key_hash(self.api_key): "drill"})
        site.gateway = start_gateway(site.root / "gateway", env=env, name=f"gateway-{site.name}")
        conf = render_nginx_conf(
            s, listen=f"127.0.0.1:{site.http_port}", tls_listen=f"127.0.0.1:{site.https_port}",
            gateway_upstreams=[f"127.0.0.1:{site.gateway.port}"], web_root=str(WEB_ROOT),
            tls_cert=str(self.tls_dir / "tls.crt"), tls_key=str(self.tls_dir / "tls.key"),
            local_prefix=str(site.root / "nginx"))
        site.nginx = start_nginx(site.root / "nginx", conf_text=conf, port=site.http_port, health_path="/healthz",
                                 env_var=None)

    def kill_site(self, site: LocalSite) -> None:
        for handle in site.handles():
            handle.kill()

    def stop(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        for site in self.sites.values():
            for handle in site.handles():
                with contextlib.suppress(Exception):
                    handle.stop()
        if self.vllm is not None:
            self.vllm.stop()

    # --- traffic -----------------------------------------------------------------------------------
    def turn(self, session: str, number: int, deadline: float) -> None:
        """One turn; retried (a new request) until some site acknowledges it."""
        assert self.dns is not None
        content = f"drill {session} turn {number}"
        body = {"model": self.served, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.config.max_tokens, "temperature": 0}
        headers = {"Authorization": f"Bearer {self.api_key}", "X-Session-Id": session}
        while True:
            site = self.dns.answer()
            standby = site == self.standby and self.promoted_at is None
            sent = time.monotonic()
            try:
                response = httpx.post(f"{self.sites[site].url}/v1/chat/completions", json=body, headers=headers,
                                      verify=self.dns.tls, timeout=15)
                if response.status_code == 200:
                    with self._lock:
                        standby = standby and (self.promoted_at is None or self.promoted_at > sent)
                        self.turns.append(Turn(session, number, site, sent, time.monotonic(), content, standby))
                    return
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise RuntimeError(f"{site} refused a drill turn: {response.status_code} {response.text[:200]}")
            except httpx.HTTPError:
                pass
            with self._lock:
                self.failures += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"turn {number} of {session} not acknowledged by any site")
            time.sleep(self.config.check_interval / 2)  # the client's back-off before it retries

    def conversation(self, session: str, first: int, last: int, deadline: float) -> None:
        for number in range(first, last + 1):
            self.turn(session, number, deadline)

    def stored(self, site: LocalSite, session: str) -> set[str]:
        raw = site.client(self.redis_password).lrange(f"qs:session:{session}:messages", 0, -1)
        return {m["content"] for m in map(json.loads, raw) if m.get("role") == "user"}

    # --- the run ------------------------------------------------------------------------------------
    def run(self) -> DrillResult:
        started = time.monotonic()
        cfg = self.config
        seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1 << 30)
        rng = random.Random(seed)
        a, b = self.sites[self.primary], self.sites[self.standby]
        sites = LocalSites(self)
        try:
            model = ensure_test_model(TEST_MODEL)
            served = self.served
            local = local_settings(self.api_key, overrides={"model": {"name": TEST_MODEL, "servedName": served}})
            self.vllm = start_vllm(self.root / "vllm", settings=local, model_dir=model, served_name=served,
                                   wait=False)
            for site in (a, b):
                site.redis = start_redis(site.root / "redis", settings=site.settings, port=site.redis_port,
                                         password=self.redis_password,
                                         replication_password=self.replication_password, tls_dir=self.tls_dir,
                                         tls_port=site.tls_port)
            self.wait(lambda: (st := sites.replica_status(b.name)) is not None and st.link_up,
                      f"{b.name}'s Redis replicating {a.name}'s over TLS", 30)
            self.vllm.wait_ready()
            for site in (a, b):
                self.start_edge(site)
            self.say(f"both sites up ({time.monotonic() - started:.1f} s); {b.name} replicates {a.name} over TLS "
                     f"as '{a.settings.redis.replication.user if a.settings.redis.replication else '?'}'")
            self.dns = DnsRule(self.dns_settings, {n: s.url for n, s in self.sites.items()},
                               self.tls_dir / "ca.crt", cfg.check_interval).start()

            # 1-2: traffic through A; kill A at a random moment
            total = cfg.sessions * cfg.turns
            kill_at = rng.randrange(total // 4, total // 2)
            sessions = [f"drill-{hashlib.sha256(f'{seed}-{i}'.encode()).hexdigest()[:12]}" for i in
                        range(cfg.sessions)]
            deadline = time.monotonic() + 120
            pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="drill-client")
            futures = [pool.submit(self.conversation, s, 1, cfg.turns, deadline) for s in sessions]
            self.wait(lambda: len(self.turns) >= kill_at, f"{kill_at} acknowledged turns", 60)
            killed_at = time.monotonic()
            self.kill_site(a)
            self.say(f"killed every process of {a.name} after {len(self.turns)} acknowledged turns (seed {seed})")

            # 3: the DNS rule moves the client; the operator's stack switch
            self.wait(lambda: self.dns is not None and self.dns.answer() == b.name, "DNS answering site B", 30)
            switched_at = time.monotonic()
            outcome = run(plan(self.dns_settings, b.name, stacks={n: s.stack for n, s in self.sites.items()},
                               addresses={n: s.replication_address for n, s in self.sites.items()}),
                          sites, say=lambda line: self.say(f"failover: {line}"))
            assert self.promoted_at is not None, "the failover did not promote site B"
            for future in futures:
                future.result()
            pool.shutdown()
            self.say(f"every session finished on {b.name}: {len(self.turns)} acknowledged turns")

            # lost turns, counted on the promoted B
            acked_by_a = [t for t in self.turns if t.site == a.name]
            on_b = {s: self.stored(b, s) for s in sessions}
            missing = [t for t in acked_by_a if t.content not in on_b[t.session]]
            after_promotion = [t for t in self.turns if t.site == b.name and t.sent > self.promoted_at]
            lost_after = [t for t in after_promotion if t.content not in on_b[t.session]]
            first_b = min((t.acked for t in self.turns if t.site == b.name), default=float("nan"))

            # 4: A comes back, rendered from its switched stack: a replica of B from its first moment
            self.start_site_redis_only(a)
            assert a.redis is not None
            returned_role = a.client(self.redis_password).info("replication")["role"]
            self.start_edge(a)
            self.wait(lambda: (st := sites.replica_status(a.name)) is not None and st.link_up and st.lag_bytes == 0,
                      f"{a.name} caught up with {b.name}", 30)
            steps = plan(self.dns_settings, a.name, stacks={n: s.stack for n, s in self.sites.items()},
                         addresses={n: s.replication_address for n, s in self.sites.items()})
            run(steps, sites, failback_from=b.name, say=lambda line: self.say(f"failback: {line}"))
            self.wait(lambda: self.dns is not None and self.dns.answer() == a.name, "DNS answering site A", 30)
            before_final = len(self.turns)
            for s in sessions:
                self.turn(s, cfg.turns + 1, time.monotonic() + 30)
            final = self.turns[before_final:]
            on_a = {s: self.stored(a, s) for s in sessions}
            stored_on_b_before = {t.content for t in self.turns[:before_final] if t.content in on_b[t.session]}
            failback_ok = (
                returned_role == "slave"
                and a.client(self.redis_password).info("replication")["role"] == "master"
                and (sites.replica_status(b.name) or ReplicaStatus("?", False, None)).role == "slave"
                and all(t.site == a.name and t.content in on_a[t.session] for t in final)
                and all(c in on_a[c.split()[1]] for c in stored_on_b_before)
            )
            result = DrillResult(
                sessions=cfg.sessions,
                acknowledged_turns=len(self.turns),
                lost_acknowledged_turns=sum(1 for t in missing if t.acked <= killed_at - 1.0),
                lost_last_second=sum(1 for t in missing if t.acked > killed_at - 1.0),
                rto_seconds=first_b - killed_at,
                failback_ok=failback_ok,
                unsaved_on_standby=sum(1 for t in self.turns if t.on_standby),
                lost_after_promotion=len(lost_after),
                dns_switch_seconds=switched_at - killed_at,
                promotion_seconds=self.promoted_at - killed_at,
                a_returned_as_replica=returned_role == "slave",
                deferred_steps=[s.what for s in outcome.deferred],
                runtime_seconds=time.monotonic() - started,
                seed=seed,
            )
        finally:
            self.stop()
        out = self.root / "result.json"
        out.write_text(json.dumps(asdict(result), indent=2) + "\n")
        self.say(f"result -> {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}\n{result.table()}")
        return result

    def start_site_redis_only(self, site: LocalSite) -> None:
        site.redis = start_redis(site.root / "redis", settings=site.settings, port=site.redis_port,
                                 password=self.redis_password, replication_password=self.replication_password,
                                 tls_dir=self.tls_dir, tls_port=site.tls_port)

    @staticmethod
    def wait(check: Callable[[], bool], what: str, within: float) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"drill: not within {within:.0f} s: {what}")
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dr drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    result = Drill(DrillConfig(sessions=args.sessions, turns=args.turns, seed=args.seed)).run()
    return 0 if result.lost_acknowledged_turns == 0 and result.failback_ok else 1


__all__ = ["Drill", "DrillConfig", "DrillResult", "main"]
