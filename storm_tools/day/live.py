"""The live view of `storm day`: phase, connections, rates, latencies and incidents while the run goes.

On a terminal (stdout and stderr both TTYs, and ``rich`` installed: the dev extra) a table redrawn twice a
second on stderr; otherwise plain progress lines on stderr every :data:`PLAIN_EVERY_S` seconds and one line
per event (an incident starting or ending), so a CI log stays readable.  stdout is left to the JSON result.
"""

from __future__ import annotations

import sys
import time
from typing import Any

PLAIN_EVERY_S = 5.0


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


class LiveView:
    def __init__(self, title: str, *, fancy: bool | None = None) -> None:
        self.title = title
        self.events: list[str] = []
        self.fancy = sys.stdout.isatty() and sys.stderr.isatty() if fancy is None else fancy
        self._live: Any = None
        self._last_plain = 0.0
        if self.fancy:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:
                self.fancy = False
            else:
                self._live = Live(console=Console(stderr=True), refresh_per_second=2, transient=False)

    def __enter__(self) -> LiveView:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def say(self, text: str) -> None:
        """One event: kept in the view's event list, and printed as a line."""
        stamp = time.strftime("%H:%M:%S")
        self.events.append(f"{stamp} {text}")
        if self._live is not None:
            self._live.console.print(f"[dim]{stamp}[/dim] {text}")
        else:
            print(f"storm day: {text}", file=sys.stderr, flush=True)

    def update(self, snap: dict[str, Any]) -> None:
        if self._live is not None:
            self._live.update(self._table(snap))
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            print(f"storm day: {self._line(snap)}", file=sys.stderr, flush=True)

    @staticmethod
    def _line(s: dict[str, Any]) -> str:
        return (f"t={s['t']:.0f}/{s['duration']:.0f}s {s['phase']} conns {s['connections']}/{s['target']:.0f} "
                f"pub {s['publishes']}/s ack {s['acks']}/s deliv {s['deliveries']}/s "
                f"ack p99 {_ms(s['ack_p99'])} ms deliv p99 {_ms(s['deliver_p99'])} ms "
                f"fails {s['connects_failed']} errors {s['errors']} incidents {s['incidents'] or '-'}")

    def _table(self, s: dict[str, Any]) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.title} — {s['phase']} {s['t']:.0f}/{s['duration']:.0f} s", show_header=False)
        table.add_column("what", style="bold")
        table.add_column("value")
        rows = [
            ("connections", f"{s['connections']} (curve {s['target']:.0f})"),
            ("connects", f"{s['connects_ok']}/s ok, {s['connects_failed']} failed this second"),
            ("messages", f"{s['publishes']}/s in, {s['acks']}/s acked, {s['deliveries']}/s delivered"),
            ("ack ms", f"p50 {_ms(s['ack_p50'])}  p99 {_ms(s['ack_p99'])}"),
            ("delivery ms", f"p50 {_ms(s['deliver_p50'])}  p99 {_ms(s['deliver_p99'])}"),
            ("errors", str(s["errors"]) if s["errors"] else "none"),
            ("incidents", s["incidents"] or "none active"),
            ("events", "\n".join(self.events[-6:]) or "-"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        return table
