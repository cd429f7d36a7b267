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


async def test_with_a_write_cost_it_reports_the_rules_delay_and_every_delivery() -> None:
    out = await measure(outboxes=20, broadcasts=5, interval=0.01, write_delay=0.0, write_cost_us=1.0)
    assert out["deliveries"] == 100 and out["frames"] >= 20 and out["events_per_frame"] >= 1
    assert set(out["delay_ms"]) == {"p50", "p99", "max"}
    assert 0 <= out["delay_ms"]["p50"] <= out["delay_ms"]["p99"] <= out["delay_ms"]["max"]
