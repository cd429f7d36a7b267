"""The PNG plots of a `storm day` report (matplotlib, Agg backend: no display needed; docs/storm-day.md).

* ``connections.png``: connections over time; connects, failed connects and reconnects per second;
* ``messages.png``: messages in (publishes, acks) and out (deliveries) per second;
* ``latency.png``: ack and delivery p50/p99 per second against the SLO thresholds;
* ``processes.png``: CPU (cores) and RSS per process (the load processes summed).

Every time plot shades the phases (grey, named at the top) and the incidents: red from injection to end,
orange from the end to the recovery (to the end of the run when it never came).  Import this module only
where matplotlib is installed (the ``day`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from storm_tools.day.postmortem import server_failed_connects
from storm_tools.day.profile import viral
from storm_tools.day.rundata import RunData, Sample

DPI = 110
WIDTH = 11.0
PHASE_SHADES = {"ramp": "#f2f2f2", "plateau": "#ffffff", "decline": "#f2f2f2"}


def _minutes(data: RunData) -> bool:
    return data.duration_s > 300


def _x(data: RunData, t: float) -> float:
    return t / 60 if _minutes(data) else t


def _xlabel(data: RunData) -> str:
    return "minutes since the start" if _minutes(data) else "seconds since the start"


def _thousands(ax: Axes) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))


def _decorate(ax: Axes, data: RunData, recoveries: dict[str, float | None], *, labels: bool) -> None:
    """Phases and incidents shaded; names on the top axis only."""
    for p in data.run.phases:
        ax.axvspan(_x(data, p.start_t), _x(data, p.end_t), color=PHASE_SHADES.get(p.name, "#f7f7f7"), zorder=0)
        if labels:
            ax.text(_x(data, (p.start_t + p.end_t) / 2), 1.01, p.name, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="#666666")
    for inc in data.incidents:
        end = max(inc.end_t, inc.start_t + 1)
        ax.axvspan(_x(data, inc.start_t), _x(data, end), color="#d62728", alpha=0.22, zorder=1, lw=0)
        rec = recoveries.get(inc.name, end)
        if rec is None:  # never steady again: the recovery runs to the end of the run
            rec = data.timeline[-1].t + 1
        if rec > end:
            ax.axvspan(_x(data, end), _x(data, rec), color="#ff7f0e", alpha=0.12, zorder=1, lw=0)
        if labels:
            ax.text(_x(data, inc.start_t), 0.97, inc.name, transform=ax.get_xaxis_transform(), rotation=90,
                    ha="right", va="top", fontsize=7, color="#a01010", zorder=5)
    ax.grid(True, alpha=0.3)
    ax.set_xlim(_x(data, data.timeline[0].t), _x(data, data.timeline[-1].t + 1))


def _figure(rows: int, title: str) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH, 2.9 * rows + 0.6), sharex=True, squeeze=False)
    fig.suptitle(title, fontsize=12)
    return fig, [a for row in axes for a in row]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _per_second_axis(ax: Axes, ylabel: str) -> None:
    """A panel of counts: from zero, thousands separated, its legend.  A panel whose every count is zero says
    so (matplotlib would scale it to ±0.05, and the whole-number labels would read 0, 0, 0, ...)."""
    ax.set_ylabel(ylabel)
    peak = max((float(np.nanmax(np.asarray(line.get_ydata(), dtype=float), initial=0.0))
                for line in ax.get_lines()), default=0.0)
    if not peak > 0:
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 1])
        ax.text(0.5, 0.5, "none in this run", transform=ax.transAxes, ha="center", va="center", color="#777777")
    else:
        ax.set_ylim(bottom=0)
    _thousands(ax)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)


def _finish(fig: Figure, axes: Sequence[Axes], data: RunData, recoveries: dict[str, float | None],
            path: Path) -> Path:
    """The shared x axis labelled, phases and incidents shaded on every panel (named on the top one), saved."""
    axes[-1].set_xlabel(_xlabel(data))
    for i, ax in enumerate(axes):
        _decorate(ax, data, recoveries, labels=i == 0)
    return _save(fig, path)


def _curve(data: RunData, points: int = 200) -> list[tuple[float, float]]:
    """[(t, users)] the profile's curve asks for over its ramp (the viral curve, run.json's phases) and its
    plateau; the decline is left out (its floor is the profile's, not the run folder's)."""
    phases = {p.name: p for p in data.run.phases}
    ramp, plateau = phases.get("ramp"), phases.get("plateau")
    if ramp is None or ramp.end_t <= ramp.start_t:
        return []
    span = ramp.end_t - ramp.start_t
    out = [(ramp.start_t + span * i / points, data.run.users * viral(i / points)) for i in range(points + 1)]
    if plateau is not None and plateau.end_t > plateau.start_t:
        out.append((plateau.end_t, float(data.run.users)))
    return out


def connections(data: RunData, recoveries: dict[str, float | None], path: Path) -> Path:
    fig, (top, bottom) = _figure(2, f"Connections — {data.run.profile}, {data.run.users:,} users")
    xs = [_x(data, s.t) for s in data.timeline]
    curve = [(t, u) for t, u in _curve(data) if t <= data.timeline[-1].t] if data.timeline else []
    if curve:
        top.plot([_x(data, t) for t, _ in curve], [u for _, u in curve], color="#555555", ls="--", lw=1.2,
                 label="the profile's curve")
    top.plot(xs, [s.connections for s in data.timeline], color="#1f77b4", lw=1.6, label="connected users")
    top.axhline(data.run.users, color="#999999", ls="--", lw=1, label=f"profile's users ({data.run.users:,})")
    _per_second_axis(top, "connections")
    bottom.plot(xs, [s.connects_ok for s in data.timeline], color="#2ca02c", lw=1, label="connects ok /s")
    bottom.plot(xs, [server_failed_connects(s) for s in data.timeline], color="#d62728", lw=1.2,
                label="connects failed (server's) /s")
    bottom.plot(xs, [s.reconnects for s in data.timeline], color="#9467bd", lw=1, alpha=0.8, label="reconnects /s")
    _per_second_axis(bottom, "per second")
    return _finish(fig, (top, bottom), data, recoveries, path)


def messages(data: RunData, recoveries: dict[str, float | None], path: Path) -> Path:
    fig, (top, bottom) = _figure(2, "Messages per second — in (publishes, acks) and out (deliveries)")
    xs = [_x(data, s.t) for s in data.timeline]
    top.plot(xs, [s.publishes for s in data.timeline], color="#1f77b4", lw=1.2, label="publishes /s")
    top.plot(xs, [s.acks for s in data.timeline], color="#2ca02c", lw=1, ls="--", label="acks /s")
    offered = data.run.offered.get("msgs_per_s")
    if isinstance(offered, int | float) and offered > 0:
        top.axhline(offered, color="#999999", ls=":", lw=1, label=f"offered {offered:,.0f}/s")
    _per_second_axis(top, "in, per second")
    bottom.plot(xs, [s.deliveries for s in data.timeline], color="#ff7f0e", lw=1.2, label="deliveries /s")
    _per_second_axis(bottom, "out, per second")
    return _finish(fig, (top, bottom), data, recoveries, path)


def _series(data: RunData, pick: Callable[[Any], dict[str, float | None]], q: str) -> tuple[list[float], list[float]]:
    """x and y of a percentile, NaN where a second had no sample (the line breaks there)."""
    values = [pick(s).get(q) for s in data.timeline]
    return [_x(data, s.t) for s in data.timeline], [math.nan if v is None else v for v in values]


def latency(data: RunData, recoveries: dict[str, float | None], thresholds: dict[str, float], path: Path) -> Path:
    fig, axes = _figure(2, "Latency per second, as the clients measured it")
    panels = (("ack", lambda s: s.ack_ms, thresholds.get("ack_p99_ms"), "publish → ack"),
              ("deliver", lambda s: s.deliver_ms, thresholds.get("deliver_p99_ms"), "publish → delivery"))
    for ax, (_key, pick, limit, title) in zip(axes, panels, strict=True):
        values: list[float] = []
        for q, color, lw in (("p50", "#2ca02c", 1.0), ("p99", "#d62728", 1.3)):
            xs, ys = _series(data, pick, q)
            values += ys
            marker = "." if len(xs) <= 400 else None  # a lone second shows in a short run
            ax.plot(xs, ys, color=color, lw=lw, label=f"{title} {q}", marker=marker, markersize=3)
        if limit:
            ax.axhline(limit, color="#555555", ls="--", lw=1, label=f"SLO p99 ≤ {limit:,.0f} ms")
        positive = [v for v in values if v > 0]  # NaN compares False: left out
        if positive and max(positive) / max(min(positive), 0.1) > 50:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.set_ylabel("ms")
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return _finish(fig, axes, data, recoveries, path)


def _cores(samples: Sequence[Sample]) -> Iterator[tuple[Sample, float | None]]:
    """Each sample with its process's cores over the interval ending at it (None for a process's first
    sample: a restarted process's new pid starts afresh)."""
    last: dict[tuple[str, int], Sample] = {}
    for s in samples:
        prev = last.get((s.name, s.pid))
        last[(s.name, s.pid)] = s
        yield s, max(0.0, (s.cpu_s - prev.cpu_s) / (s.t - prev.t)) if prev and s.t > prev.t else None


def _per_process(samples: Sequence[Sample]) -> dict[str, list[tuple[float, float, float]]]:
    """name -> [(t, cores over the interval ending at t, rss MiB)], the load processes summed as 'load'."""
    lines: dict[str, list[tuple[float, float, float]]] = {}
    load: dict[float, list[float]] = {}
    for s, cores in _cores(samples):
        if s.role == "load":
            key = round(s.t)
            acc = load.setdefault(key, [0.0, 0.0])
            acc[0] += cores or 0.0
            acc[1] += s.rss_bytes / 2**20
        elif cores is not None:
            lines.setdefault(s.name, []).append((s.t, cores, s.rss_bytes / 2**20))
    if load:
        lines["load (all)"] = [(t, c, r) for t, (c, r) in sorted(load.items())]
    return lines


def _all_cores(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """[(t, cores of every sampled process together)] per sampling round (the samples of one round share their
    second): what the run asked of the machine, which the per-process lines hide (seven gateways at 0.1
    core each read as an idle machine until summed; docs/storm-day.md)."""
    total: dict[float, float] = {}
    for s, cores in _cores(samples):
        if cores is not None:
            key = float(round(s.t))
            total[key] = total.get(key, 0.0) + cores
    return sorted(total.items())


def _smooth(values: list[float], width: int) -> list[float]:
    """Trailing moving average over ``width`` samples (a long run's CPU per 2-s sample is noise)."""
    if width <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - width] if i >= width else 0.0)
        out.append(acc / min(i + 1, width))
    return out


def processes(data: RunData, recoveries: dict[str, float | None], path: Path) -> Path:
    fig, (top, bottom) = _figure(2, "CPU and memory per process")
    lines = _per_process(data.processes)
    samples = max((len(v) for v in lines.values()), default=0)
    width = max(1, samples // 150)  # about 150 points across the plot
    cmap = plt.get_cmap("tab10")
    styles = ("-", "--", ":", "-.")
    rss_values: list[float] = []
    for i, (name, pts) in enumerate(sorted(lines.items())):
        xs = [_x(data, p[0]) for p in pts]
        color, ls = cmap(i % 10), styles[(i // 10) % len(styles)]
        top.plot(xs, _smooth([p[1] for p in pts], width), label=name, color=color, ls=ls, lw=1.1)
        bottom.plot(xs, [p[2] for p in pts], label=name, color=color, ls=ls, lw=1.1)
        rss_values += [p[2] for p in pts if p[2] > 0]
    total = _all_cores(data.processes)
    if total:
        top.plot([_x(data, t) for t, _ in total], _smooth([c for _, c in total], width), color="black", lw=2.0,
                 label="all processes")
    cores = data.run.machine.get("cores")
    if isinstance(cores, int | float):
        top.axhline(cores, color="#555555", ls="--", lw=1, label=f"{cores:g} cores")
    span = data.duration_s * width / samples if samples else 0
    top.set_ylabel(f"CPU (cores, mean over {span:.0f} s)" if width > 1 else "CPU (cores)")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("RSS (MiB)")
    if rss_values and max(rss_values) / min(rss_values) > 20:  # JVMs of GiBs beside gateways of MiBs
        bottom.set_yscale("log")
        bottom.set_ylabel("RSS (MiB, log scale)")
    else:
        bottom.set_ylim(bottom=0)
    _thousands(bottom)
    if lines:
        top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0)
    else:
        top.text(0.5, 0.5, "processes.jsonl: no sample", transform=top.transAxes, ha="center")
    return _finish(fig, (top, bottom), data, recoveries, path)


def write_all(data: RunData, recoveries: dict[str, float | None], thresholds: dict[str, float],
              folder: Path, progress: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """Every plot into ``folder`` (created); the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Callable[[], Path]]] = [
        ("connections", lambda: connections(data, recoveries, folder / "connections.png")),
        ("messages", lambda: messages(data, recoveries, folder / "messages.png")),
        ("latency", lambda: latency(data, recoveries, thresholds, folder / "latency.png")),
        ("processes", lambda: processes(data, recoveries, folder / "processes.png")),
    ]
    written = []
    for i, (name, job) in enumerate(jobs, 1):
        progress(f"plot {i}/{len(jobs)}: {name}")
        written.append(job())
    return written
