"""The routing policies as pure code (issue 20): block hashing, the per-backend LRU, the load bound,
determinism across gateway replicas, and failover through the proxy's retries. No servers."""

from __future__ import annotations

import math
import random

import aiohttp
import pytest

from app.gateway.backends.pool import Backend, BackendPool
from app.gateway.backends.prefix_aware import PrefixAwarePolicy
from app.gateway.backends.prefix_blocks import BlockLRU, block_hashes, prompt_text
from app.gateway.backends.routing import Route, Router, make_router
from app.gateway.metrics import Metrics
from app.gateway.proxy import Proxy, UpstreamFailure
from app.gateway.settings import RoutingTuning

ADDRESSES = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


def router(addresses: list[str] = ADDRESSES, **tuning: object) -> Router:
    metrics = Metrics()
    pool = BackendPool(metrics, eject_after_failures=3)
    pool.set_addresses(addresses)
    for b in pool.all():
        pool.mark_probe(b, True, [{"id": "m"}])
    return make_router(pool, metrics, RoutingTuning(**tuning))


def chat(*contents: str, system: str = "You are terse.") -> dict[str, object]:
    roles = ["user", "assistant"]
    return {"messages": [{"role": "system", "content": system},
                         *({"role": roles[i % 2], "content": c} for i, c in enumerate(contents))]}


def sample_text(seed: int, chars: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghij klmnop") for _ in range(chars))


def test_the_same_prefix_gives_the_same_chain_and_a_longer_prompt_extends_it() -> None:
    text = sample_text(1, 1000)
    first, again = block_hashes(text, 64), block_hashes(text, 64)
    assert first == again and len(first) == 1000 // 64  # full blocks only
    longer = block_hashes(text + sample_text(2, 300), 64)
    assert longer[: len(first)] == first and len(longer) > len(first)
    assert len(set(first)) == len(first)


def test_one_changed_token_changes_that_block_and_every_later_one() -> None:
    text = sample_text(3, 1280)
    changed = text[:700] + ("X" if text[700] != "X" else "Y") + text[701:]
    a, b = block_hashes(text, 64), block_hashes(changed, 64)
    cut = 700 // 64
    assert a[:cut] == b[:cut]
    assert all(x != y for x, y in zip(a[cut:], b[cut:], strict=True))
    # The same block content after a different prefix is a different block (the chain names the prefix).
    assert block_hashes("A" * 64 + "B" * 64, 64)[1] != block_hashes("C" * 64 + "B" * 64, 64)[1]


def test_a_conversation_resent_whole_keeps_its_earlier_blocks() -> None:
    r = router()
    turn1 = r.route(chat("first question " * 20))
    turn2 = r.route(chat("first question " * 20, "an answer " * 10, "second question"))
    assert turn1.blocks and turn2.blocks[: len(turn1.blocks)] == turn1.blocks
    assert turn1.key == turn2.key  # ordered by the first block: same rendezvous winner
    assert prompt_text(chat("x")).startswith("<|im_start|>system\nYou are terse.<|im_end|>")


def test_the_lru_is_bounded_and_keeps_prefixes_longer_than_their_extensions() -> None:
    lru = BlockLRU(10)
    old = block_hashes(sample_text(4, 64 * 8), 64)
    lru.add(old)
    assert lru.matched(old) == 8
    new = block_hashes(sample_text(5, 64 * 6), 64)
    lru.add(new)
    assert len(lru) == 10  # never more than the capacity
    assert lru.matched(new) == 6
    assert lru.matched(old) == 4  # the old chain lost its tail, kept its head
    lru.add(block_hashes(sample_text(6, 64 * 30), 64))  # one prompt longer than the whole cache
    assert len(lru) == 10 and lru.matched(old) == 0
    with pytest.raises(ValueError):
        BlockLRU(0)


def test_the_policy_follows_the_cache_and_remembers_within_its_bound() -> None:
    r = router()
    conversation = [chat("shared document " * 50 + f"q{i}") for i in range(5)]
    chosen = set()
    for body in conversation:
        route = r.route(body)
        decision = r.choose(route)
        assert decision is not None
        queued = r.started(decision, route)
        r.prefilled(decision.backend, queued)  # one at a time: no load
        chosen.add(decision.backend.address)
    assert len(chosen) == 1  # every request with the long shared prefix went where it is cached
    hit = r.choose(r.route(conversation[0]))
    assert hit is not None and hit.cached_tokens >= 50 * 16 // 4 - 32


def test_no_backend_goes_above_the_bound_while_another_is_below_it() -> None:
    """One hot prefix, requests arriving while none finishes (prefilled, decoding): the cache pulls them all
    to one backend, the bound spreads them. After every decision the chosen backend
    is within ceil(factor x the mean load), unless no backend could be (then it was the least loaded)."""
    for factor in (1.0, 1.25, 2.0):
        r = router(load_factor=factor)
        policy = r.policy
        assert isinstance(policy, PrefixAwarePolicy)
        spills = 0
        for i in range(60):
            route = r.route(chat("hot document " * 200 + f"user {i}"))
            before = {b.address: policy.load(b) for b in r.pool.all()}
            decision = r.choose(route)
            assert decision is not None
            r.pool.acquire(decision.backend)
            r.prefilled(decision.backend, r.started(decision, route))
            spills += decision.spilled
            loads = {b.address: policy.load(b) for b in r.pool.all()}
            bound = math.ceil(factor * sum(loads.values()) / len(loads))
            if loads[decision.backend.address] > bound:
                assert before[decision.backend.address] == min(before.values()), (factor, i, before)
            heaviest = max(loads.values())
            assert heaviest <= bound or heaviest - min(loads.values()) <= policy.weight(route, 0), loads
        assert spills > 0 and all(b.queued_prefill_tokens == 0 for b in r.pool.all())
        counts = sorted(b.outstanding for b in r.pool.all())
        assert counts[-1] <= math.ceil(factor * 60 / 3) and counts[-2] >= 1, (factor, counts)


def test_queued_prefill_counts_in_the_load_and_against_the_cache() -> None:
    r = router(ADDRESSES[:2], prefill_tokens_per_load=100)
    policy = r.policy
    assert isinstance(policy, PrefixAwarePolicy)
    route = r.route(chat("document " * 300))
    first = r.choose(route)
    assert first is not None
    queued = r.started(first, route)
    assert queued == route.prompt_tokens and policy.load(first.backend) == queued / 100
    # The same prompt while the first's prefill is queued: waiting behind it costs as much as computing it
    # elsewhere, and the holder is far over the bound in prefill tokens: it goes to the other backend.
    second = r.choose(route)
    assert second is not None and second.backend is not first.backend
    r.prefilled(first.backend, queued)
    third = r.choose(route)  # prefilled: now the cache wins
    assert third is not None and third.backend is first.backend and third.cached_tokens > 0


def test_two_routers_that_see_the_same_requests_choose_the_same() -> None:
    """Two gateway replicas, no shared state: same backends, same traffic, same decisions (no randomness),
    including ties on new prefixes (rendezvous of the first block) and spill-overs."""
    rng = random.Random(20)
    docs = [sample_text(100 + d, 900) for d in range(6)]
    one, two = router(), router(list(reversed(ADDRESSES)))  # the order the backends are listed in is irrelevant
    in_flight: list[tuple[Router, Backend, int]] = []
    for i in range(300):
        body = chat(rng.choice(docs) + f" q{rng.randrange(50)}")
        sid = f"s{rng.randrange(5)}" if rng.random() < 0.3 else None
        picks = []
        for r in (one, two):
            route = r.route(body, sid)
            decision = r.choose(route)
            assert decision is not None
            r.pool.acquire(decision.backend)
            in_flight.append((r, decision.backend, r.started(decision, route)))
            picks.append(decision.backend.address)
        assert picks[0] == picks[1], i
        while in_flight and rng.random() < 0.5:  # finish the oldest, in the same order on both
            for _ in range(2):
                r, backend, queued = in_flight.pop(0)
                r.prefilled(backend, queued)
                r.pool.release(backend)
    # On an idle fleet new prefixes are spread by rendezvous, not all sent to the first backend listed.
    fresh = router()
    firsts = {fresh.choose(fresh.route(chat(sample_text(500 + k, 400)))).backend.address  # type: ignore[union-attr]
              for k in range(30)}
    assert len(firsts) == 3


def test_a_session_keeps_its_rendezvous_backend_under_the_prefix_policy() -> None:
    from app.gateway.backends.routing import rendezvous_score

    r = router()
    for n in range(20):
        sid = f"session-{n}"
        decision = r.choose(r.route(chat(f"turn {n}"), sid))
        assert decision is not None
        assert decision.backend.address == max(ADDRESSES, key=lambda a: rendezvous_score(sid, a))


def test_round_robin_and_session_policies_stay_selectable() -> None:
    rr = router(policy="round_robin")
    picks = []
    for _ in range(6):
        decision = rr.choose(rr.route(chat("same")))
        assert decision is not None
        picks.append(decision.backend.address)
    assert picks == sorted(ADDRESSES) * 2
    session = router(policy="session")
    busy = session.pool.all()[0]
    session.pool.acquire(busy)
    decision = session.choose(session.route(chat("same")))
    assert decision is not None and decision.backend is not busy  # fewest in flight


async def test_failover_when_the_chosen_backend_fails_before_the_first_byte() -> None:
    """The proxy's retries ask the router again, excluding what failed; the queued prefill each attempt
    added is taken back whatever happened."""
    r = router(ADDRESSES[:2])
    route = r.route(chat("a long shared prefix " * 40))
    first = r.choose(route)
    assert first is not None
    async with aiohttp.ClientSession() as client:
        proxy = Proxy(client, r.pool, Metrics(), router=r, connect_timeout=1, first_token_timeout=1,
                      idle_timeout=1, total_timeout=5, retry_attempts=3)
        tried: list[str] = []

        async def attempt(backend: Backend) -> str:
            tried.append(backend.address)
            assert backend.queued_prefill_tokens > 0  # counted while the attempt runs
            if backend is first.backend:
                raise UpstreamFailure("connect", "refused")
            return backend.address

        served = await proxy._attempts(route, attempt)
    assert tried == [first.backend.address, served] and served != first.backend.address
    assert all(b.queued_prefill_tokens == 0 for b in r.pool.all())
    assert not first.backend.healthy  # a refused connection ejects
    assert r.choose(route) is not None and r.choose(route).backend.address == served  # type: ignore[union-attr]


def test_route_of_completions_and_short_prompts() -> None:
    r = router()
    assert r.route({"prompt": "short"}).blocks == ()
    assert r.route({"prompt": "short"}).key == r.route({"prompt": "short"}).key != r.route({"prompt": "other"}).key
    assert r.route({"prompt": [1, 2, 3] * 200}).blocks
    assert r.route({"prompt": ["x" * 500, "y"]}).blocks == r.route({"prompt": "x" * 500}).blocks
    assert isinstance(r.route(chat("x"), "sid"), Route) and r.route(chat("x"), "sid").key == "sid"
