"""The Hazelcast adapter's process-local near cache of the directory map (storm/adapters/hazelcast_cache.py):
what it keeps, for how long, and what it must refuse to keep.  Across real clients:
tests/contract/test_cache_contract.py (the ``directory_near_cache`` tests)."""
from __future__ import annotations

from types import SimpleNamespace

from storm.adapters.hazelcast_cache import NearCache


def _cache(max_entries: int = 100) -> tuple[NearCache, list[float]]:
    clock = [0.0]
    return NearCache(30.0, max_entries, now=lambda: clock[0]), clock


def _read(near: NearCache, key: str, value: bytes | None, lives_s: float = 60.0) -> None:
    near.begin_read(key)
    near.end_read(key, value, lives_s)


def test_a_read_answer_is_served_until_the_ttl_or_the_entry_s_own_life_ends() -> None:
    near, clock = _cache()
    _read(near, "a", b"1")  # lives 60 s in the cluster, kept 30 s (the TTL)
    _read(near, "tomb", b"\x00", lives_s=3.0)  # a tombstone of 3 s stays 3 s, not 30
    clock[0] = 2.9
    assert (near.get("a"), near.get("tomb"), near.hits) == (b"1", b"\x00", 2)
    clock[0] = 3.0
    assert near.get("tomb") is None and near.get("a") == b"1"
    clock[0] = 30.0
    assert near.get("a") is None and len(near) == 0


def test_misses_and_expired_entries_are_not_kept() -> None:
    near, _ = _cache()
    _read(near, "absent", None)
    _read(near, "gone", b"1", lives_s=-0.5)  # expired in the cluster while the answer travelled
    assert near.get("absent") is None and near.get("gone") is None and len(near) == 0


def test_an_answer_read_while_its_key_changed_is_not_kept_but_other_keys_are() -> None:
    near, _ = _cache()
    near.begin_read("k")
    near.begin_read("other")
    near.on_event(SimpleNamespace(key="k"))  # another client set k while we read it
    near.end_read("k", b"old", 60.0)
    near.end_read("other", b"fine", 60.0)
    assert near.get("k") is None and near.get("other") == b"fine"
    _read(near, "k", b"new")  # the next read, after the change, is kept
    assert near.get("k") == b"new"


def test_events_writes_clears_and_reconnections_drop_entries() -> None:
    near, _ = _cache()
    for key in ("a", "b", "c", "d"):
        _read(near, key, b"v")
    near.on_event(SimpleNamespace(key="a"))
    near.invalidate("b")  # our own write
    assert [near.get(k) for k in "abcd"] == [None, None, b"v", b"v"]
    near.on_state("DISCONNECTED")  # hits still answer during an outage
    assert near.get("c") == b"v"
    near.begin_read("e")
    near.on_state("CONNECTED")  # events may have been missed while disconnected: everything goes
    near.end_read("e", b"v", 60.0)
    assert near.get("c") is None and near.get("e") is None
    _read(near, "f", b"v")
    near.on_clear(None)  # clear() or evictAll() of the map
    near.on_event(SimpleNamespace(key=None))  # an event without a key: drop everything to be safe
    assert near.get("f") is None


def test_it_holds_at_most_max_entries_dropping_the_oldest() -> None:
    near, _ = _cache(max_entries=3)
    for key in ("a", "b", "c", "d"):
        _read(near, key, b"v")
    assert len(near) == 3 and near.get("a") is None and near.get("d") == b"v"
