"""`python -m storm_tools.bench.writepath`: the write path's bench runs and reports its shape (never its speed)."""

from __future__ import annotations

from storm_tools.bench.writepath import measure


async def test_adaptive_writes_every_event_at_once_one_frame_each() -> None:
    out = await measure(outboxes=20, broadcasts=3, interval=0.005, write_delay=0.0)
    assert out["frames"] == 60  # one frame per delivery, every delivery written
    assert set(out) == {"outboxes", "broadcasts", "write_delay_s", "us_per_delivery", "frames", "passes", "holds"}
    assert out["us_per_delivery"] > 0


async def test_a_fixed_delay_goes_through_the_pass() -> None:
    out = await measure(outboxes=20, broadcasts=3, interval=0.005, write_delay=0.001)
    assert out["frames"] == 60 and out["passes"] >= 3 and out["holds"] == 0
