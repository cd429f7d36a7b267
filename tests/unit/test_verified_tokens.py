"""A token verified once is not verified again (storm/adapters/verified_tokens.py, issue 11), and what a
cached verification must still refuse: an expired token, a token after its key set changed, an entry
past its TTL."""

from __future__ import annotations

import time
from unittest import mock

import jwt
import pytest

from storm.adapters.dev_identity import DevIdentity
from storm.adapters.verified_tokens import VerifiedTokens
from storm.errors import Unauthenticated
from storm.ports.clock import ManualClock
from storm.ports.identity import Claims

SECRET = "s" * 32


def _claims(sub: str = "dev|a") -> Claims:
    return Claims(subject=sub, workspace="demo", name="a", expires_at=2e9)


def test_entries_are_bounded_expire_and_are_tied_to_their_tag() -> None:
    clock = ManualClock()
    cache = VerifiedTokens(max_entries=2, ttl_s=10.0, monotonic=clock.monotonic)
    d1, d2, d3 = (cache.digest(t) for t in ("t1", "t2", "t3"))
    cache.put(d1, _claims("1"), tag=1)
    cache.put(d2, _claims("2"), tag=1)
    cache.put(d3, _claims("3"), tag=1)  # full: the oldest goes
    assert cache.get(d1, 1) is None and len(cache) == 2
    assert cache.get(d2, 2) is None  # verified under another key set: forgotten
    assert cache.get(d3, 1) is not None and cache.hits == 1
    clock.advance(10.0)
    assert cache.get(d3, 1) is None and len(cache) == 0
    with pytest.raises(ValueError):
        VerifiedTokens(max_entries=-1)


async def test_dev_identity_verifies_a_token_once() -> None:
    identity = DevIdentity(SECRET)
    token = identity.issue("dev|alice", "demo")
    with mock.patch("storm.adapters.dev_identity.jwt.decode", wraps=jwt.decode) as decode:
        first = await identity.verify(token)
        again = await identity.verify(token)
    assert again is first and decode.call_count == 1
    other = DevIdentity("t" * 32)  # a token of another secret is not taken from anyone's cache
    with pytest.raises(Unauthenticated):
        await other.verify(token)


async def test_a_cached_token_still_expires() -> None:
    identity = DevIdentity(SECRET, leeway_s=0.0)
    token = identity.issue("dev|alice", "demo", ttl_s=60)
    claims = await identity.verify(token)
    with mock.patch("storm.adapters.dev_identity.time.time", return_value=claims.expires_at + 1):
        with pytest.raises(Unauthenticated, match="expired"):
            await identity.verify(token)
    assert time.time() < claims.expires_at
