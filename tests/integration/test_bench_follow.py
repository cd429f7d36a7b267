"""`storm bench follow` runs end to end on a live Pulsar and reports its figures (not how fast): a gateway's
broadcast subscription following a few dozen channels, with traffic on some, every record once and in
order.  See docs/benchmarks.md ("storm bench follow") and docs/adr/0013-following-channels.md."""

from __future__ import annotations

import json
import logging

import pytest

from storm_cli import main as cli
from storm_tools.bench.follow import REQUIRED_KEYS

pytestmark = pytest.mark.integration


def test_bench_follow_follows_every_channel_and_delivers_in_order(
        pulsar_urls: tuple[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    service_url, admin_url = pulsar_urls
    monkeypatch.setenv("STORM_PULSAR_URL", service_url)
    monkeypatch.setenv("STORM_PULSAR_ADMIN_URL", admin_url)
    code = cli.main(["bench", "follow", "--channels", "30", "--publish-channels", "5", "--messages", "50",
                     "--rate", "200", "--idle-s", "0.5", "--timeout", "20", "--json"])
    out = capsys.readouterr()
    assert "bench follow: 30 channels" in out.err  # progress on stderr, the JSON alone on stdout
    result = json.loads(out.out)
    assert code == 0, result
    assert set(REQUIRED_KEYS) <= set(result)
    assert (result["channels"], result["followed"], result["published"], result["delivered"]) == (30, 30, 50, 50)
    assert (result["lost"], result["duplicates"], result["inversions"]) == (0, 0, 0)
    assert result["rss_mb"] > 0 and result["cpu_us_per_delivery"] > 0
    assert "error" not in result and "failed" not in result
    assert "cleanup_error" not in result  # the workspace and its topics are gone again
    # the bench quiets STORM's and httpx's INFO lines while it runs, and gives the caller its logging back
    # (left at WARNING, it silenced every later test's DEBUG capture in the same process)
    assert logging.getLogger("storm").level == logging.NOTSET and logging.getLogger("httpx").level == logging.NOTSET


def test_bench_follow_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit, match="must be > 0"):
        cli.main(["bench", "follow", "--channels", "0"])
