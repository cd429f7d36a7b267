"""`storm bench reconnect`'s client (storm_tools/bench/reconnect.py): only a connection its opener kept is a drop
to resume from. An attempt aborted by its opener's timeout just as it became ready used to be reported as a
drop too: its replayed messages were counted, a second reconnect loop started from its offset while the first
retried from the old one, and the run counted duplicates and inversions the server never sent (22:57 run)."""

from __future__ import annotations

from storm_tools.bench.reconnect import Member


def _member(drops: list[int | None]) -> Member:
    return Member(0, 1, b"{}", "c", 5, True, lambda _m, code: drops.append(code))


async def test_a_close_of_a_kept_connection_is_a_drop() -> None:
    drops: list[int | None] = []
    m = _member(drops)
    m.ready.set_result(None)
    m.registered = True
    m.on_close(1006)
    assert drops == [1006]


async def test_a_close_of_an_attempt_its_opener_aborted_is_not_a_drop() -> None:
    drops: list[int | None] = []
    m = _member(drops)
    m.on_message(b'{"type":"subscribed","channel":"c","offset":9}\n{"type":"message","offset":6}', False)
    assert m.ready.done() and m.offsets == [6]  # ready, and a replayed message arrived ...
    m.on_close(None)  # ... but the opener's timeout fired first and it aborted the attempt
    assert drops == []
