"""The capacities `storm cost` sizes the fleet by, measured in a `storm day` run (docs/storm-day.md, "The bill").

:func:`derive` reads the run's steady window — the plateau phase (the whole run when it has none) less each
incident from its injection to 30 s after its end — and divides the CPU each role burned there
(processes.jsonl: cumulative ``cpu_s`` per process, a restarted process's new pid counted afresh) by what the
clients did there (timeline.jsonl):

* ``pulsar_us_per_publish``, ``consumer_us_per_message``, ``db_us_per_write``, ``hazelcast_us_per_publish``:
  the role's CPU per acked publish (``publishes/s per Pulsar core`` = 1e6 / the figure, and so on);
* the gateways' CPU is one total for two terms of the model (per publish, per delivery) that a run with one
  fan-out cannot separate: it is attributed to the term that dominates by the default figures, the other
  keeping its default (the source text says which); idle connections' heartbeats are in it (conservative);
* ``gateway_bytes_per_connection``: the gateways' RSS at the sample with the most connections less their RSS
  at their first sample, per connection added, both taken before any gateway restarted and with at least
  :data:`MIN_CONNECTIONS` added (connections per GiB = 2^30 / the figure).

A figure the run cannot give (no such process sampled, fewer than :data:`MIN_MESSAGES` messages or
:data:`MIN_WINDOW_S` seconds in the window) keeps the default of storm_tools/capacities/measured.json, and the
document says which came from where.  The shared services are shared with whatever else runs on the machine:
their CPU is the machine's noise as much as the run's, which the sources say.  No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storm_tools.day.rundata import RunData, Sample

FORMAT = "storm-capacities/1"
MIN_MESSAGES = 200
MIN_WINDOW_S = 10.0
MIN_CONNECTIONS = 500  # added between the two RSS samples
INCIDENT_TAIL_S = 30.0
PER_PUBLISH = {  # capacity -> the process role whose CPU it divides
    "pulsar_us_per_publish": "pulsar",
    "consumer_us_per_message": "consumers",
    "db_us_per_write": "postgres",
    "hazelcast_us_per_publish": "hazelcast",
}


@dataclass(frozen=True)
class Window:
    spans: tuple[tuple[float, float], ...]

    def __contains__(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.spans)


def steady_window(data: RunData) -> Window:
    plateau = [(p.start_t, p.end_t) for p in data.run.phases if p.name == "plateau"]
    spans = plateau or [(data.timeline[0].t, data.timeline[-1].t + 1)]
    for inc in data.incidents:  # cut each incident out of every span
        cut_a, cut_b = inc.start_t, inc.end_t + INCIDENT_TAIL_S
        spans = [piece for a, b in spans for piece in ((a, min(b, cut_a)), (max(a, cut_b), b)) if piece[1] > piece[0]]
    return Window(tuple(spans))


def role_cores(samples: Sequence[Sample], window: Window) -> tuple[dict[str, float], dict[str, float]]:
    """Per role: the mean cores busy over the window's sampled intervals, and the seconds sampled (the
    processes of a role are sampled together: the longest coverage of one of them is the role's)."""
    last: dict[tuple[str, int], Sample] = {}
    cpu: dict[str, float] = {}
    covered: dict[tuple[str, str], float] = {}
    for s in samples:
        prev = last.get((s.name, s.pid))
        last[(s.name, s.pid)] = s
        if prev is None or s.t <= prev.t or (prev.t + s.t) / 2 not in window:
            continue
        cpu[s.role] = cpu.get(s.role, 0.0) + max(0.0, s.cpu_s - prev.cpu_s)
        covered[(s.role, s.name)] = covered.get((s.role, s.name), 0.0) + (s.t - prev.t)
    seconds: dict[str, float] = {}
    for (role, _name), dt in covered.items():
        seconds[role] = max(seconds.get(role, 0.0), dt)
    return {r: cpu[r] / seconds[r] for r in cpu if seconds.get(r)}, seconds


def _rss_per_connection(data: RunData) -> tuple[float, str] | str:
    """Bytes per connection: the gateways' RSS at the sample with the most connections less their first, both
    before any gateway restarted (a new process starts small); else why not."""
    gw = [s for s in data.processes if s.role == "gateway"]
    if not gw:
        return "no gateway sampled"
    first_pid: dict[str, int] = {}
    by_t: dict[float, dict[str, Sample]] = {}
    for s in gw:
        first_pid.setdefault(s.name, s.pid)
        by_t.setdefault(s.t, {})[s.name] = s
    names = set(first_pid)
    usable = sorted(t for t, rows in by_t.items()
                    if set(rows) == names and all(r.pid == first_pid[n] for n, r in rows.items()))
    if not usable:
        return "no sample of every gateway before a restart"
    seconds = {s.t: s.connections for s in data.timeline}

    def connections(t: float) -> int:
        return seconds.get(float(int(t)), 0)

    base_t = usable[0]
    peak_t = max(usable, key=lambda t: (connections(t), -t))
    added = connections(peak_t) - connections(base_t)
    if added < MIN_CONNECTIONS:
        return (f"{added:,} connections added before any gateway restarted ({MIN_CONNECTIONS:,} needed: the "
                "processes' own heap growth would dominate)")
    at_peak = sum(r.rss_bytes for r in by_t[peak_t].values())
    base = sum(r.rss_bytes for r in by_t[base_t].values())
    if at_peak <= base:
        return "the gateways' RSS did not grow with the connections"
    return (at_peak - base) / added, (
        f"gateways' RSS {at_peak / 2**20:,.0f} MiB at t={peak_t:g} s with {connections(peak_t):,} connections "
        f"less {base / 2**20:,.0f} MiB at t={base_t:g} s with {connections(base_t):,}")


def derive(data: RunData, defaults: dict[str, Any]) -> dict[str, Any]:
    """A ``storm-capacities/1`` document: the run's figures where it gives them, ``defaults``' elsewhere.

    Each figure carries ``origin``: ``run`` or ``default``.  ``run`` summarises the headline figures
    (connections per GiB and per gateway core, deliveries/s per gateway core, publishes/s per Pulsar core,
    writes/s per database core, the Hazelcast and PostgreSQL load)."""
    figures: dict[str, dict[str, Any]] = {k: {**v, "origin": "default"} for k, v in defaults["capacities"].items()}
    window = steady_window(data)
    seconds = [s for s in data.timeline if s.t in window]
    n = len(seconds)
    acks = sum(s.acks for s in seconds)
    deliveries = sum(s.deliveries for s in seconds)
    connections = sum(s.connections for s in seconds) / n if n else 0.0
    cores, sampled = role_cores(data.processes, window)
    where = (f"storm day run {data.folder.name} ({data.run.profile}, {data.run.users:,} users), "
             f"{n} s of steady window")
    enough = n >= MIN_WINDOW_S and acks >= MIN_MESSAGES
    pub_rate, dlv_rate = (acks / n, deliveries / n) if n else (0.0, 0.0)
    notes = []
    if not enough:
        notes.append(f"the steady window held {n} s and {acks} acked publishes (at least {MIN_WINDOW_S:g} s and "
                     f"{MIN_MESSAGES} needed): the per-message figures keep their defaults")
    for key, role in PER_PUBLISH.items():
        if enough and cores.get(role):
            us = cores[role] * 1e6 / pub_rate
            figures[key] = {"value": round(us, 2), "measured": True, "origin": "run",
                            "source": f"{where}: {role} {cores[role]:.2f} cores over {pub_rate:,.0f} acked "
                                      f"publishes/s (shared service: other load on the machine is in it)"}
        elif enough:
            notes.append(f"{key}: no '{role}' process sampled in the window, default kept")
    if enough and cores.get("gateway"):
        a = float(defaults["capacities"]["gateway_us_per_publish"]["value"])
        b = float(defaults["capacities"]["gateway_us_per_delivery"]["value"])
        total_us = cores["gateway"] * 1e6
        fanout = dlv_rate / pub_rate
        if pub_rate * a >= dlv_rate * b:
            key, value = "gateway_us_per_publish", max(0.01, (total_us - dlv_rate * b) / pub_rate)
            how = f"less {dlv_rate:,.0f} deliveries/s x the default {b:g} us, per acked publish"
        else:
            key, value = "gateway_us_per_delivery", max(0.01, (total_us - pub_rate * a) / dlv_rate)
            how = f"less {pub_rate:,.0f} publishes/s x the default {a:g} us, per delivery"
        figures[key] = {"value": round(value, 2), "measured": True, "origin": "run",
                        "source": f"{where}: gateways {cores['gateway']:.2f} cores (fan-out {fanout:.1f}, "
                                  f"{connections:,.0f} connections' heartbeats included) {how}"}
    rss = _rss_per_connection(data)
    if isinstance(rss, str):
        notes.append(f"gateway_bytes_per_connection keeps its default: {rss}")
    else:
        figures["gateway_bytes_per_connection"] = {"value": round(rss[0]), "measured": True, "origin": "run",
                                                   "source": f"{where}: {rss[1]}"}

    def per_core(rate: float, role: str) -> float | None:
        return round(rate / cores[role], 1) if cores.get(role) and rate else None

    gw_bytes = float(figures["gateway_bytes_per_connection"]["value"])
    summary = {
        "window_s": n, "window_spans": [list(s) for s in window.spans],
        "acked_publishes_per_s": round(pub_rate, 1), "deliveries_per_s": round(dlv_rate, 1),
        "mean_connections": round(connections), "cores": {r: round(c, 3) for r, c in sorted(cores.items())},
        "sampled_s": {r: round(v, 1) for r, v in sorted(sampled.items())},
        "connections_per_gib": round(2**30 / gw_bytes)
        if figures["gateway_bytes_per_connection"]["origin"] == "run" else None,
        "connections_per_gateway_core": per_core(connections, "gateway"),
        "deliveries_per_s_per_gateway_core": per_core(dlv_rate, "gateway"),
        "publishes_per_s_per_pulsar_core": per_core(pub_rate, "pulsar"),
        "writes_per_s_per_db_core": per_core(pub_rate, "postgres"),
        "publishes_per_s_per_consumers_core": per_core(pub_rate, "consumers"),
        "hazelcast_cores": round(cores["hazelcast"], 3) if "hazelcast" in cores else None,
        "postgres_cores": round(cores["postgres"], 3) if "postgres" in cores else None,
        "from_run": sorted(k for k, v in figures.items() if v["origin"] == "run"),
        "from_defaults": sorted(k for k, v in figures.items() if v["origin"] == "default"),
        "notes": notes,
    }
    return {"format": FORMAT, "machine": data.run.machine, "note": f"derived from {where}; figures with "
            "origin 'default' are storm_tools/capacities/measured.json's", "capacities": figures, "run": summary}
