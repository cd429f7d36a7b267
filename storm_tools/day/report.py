"""The report of a `storm day` run: report.json, report.md and plots/*.png in the run folder (docs/storm-day.md).

    python -m storm_tools.day.report FOLDER        # (storm day calls write_report itself at the end of a run)

It reads only the run folder's files (:mod:`storm_tools.day.rundata`) and writes, verdict first:

* the SLO table, evaluated by :mod:`storm_tools.slo` over the shared definitions of storm_tools/slos.yaml.
  :func:`collectors` is the adapter from a run to that module's :class:`~storm_tools.statsd.Collector`: the
  servers' DogStatsD points of metrics.jsonl when the run has them for an SLO's metrics, else the clients'
  timeline (``storm.gateway.connects`` from connects ok/failed, a failure's code mapped to the server's
  result by :func:`~storm_tools.day.postmortem.connect_result`; ``storm.commands{op:publish,result:ok}`` from
  the acks; the latency SLIs from each second's p99, which a slice's p99 then takes over: a conservative
  stand-in for the samples).  The table says which source judged each SLO;
* the acceptance of issue 15 (connect success >= 99.9 %, no acked message lost, none twice, none out of order);
* one post-mortem draft per incident with the error budget it burned (:mod:`storm_tools.day.postmortem`);
* the plots (:mod:`storm_tools.day.plots`) and the capacities `storm cost --from` sizes the fleet by
  (:mod:`storm_tools.day.capacity`).

A malformed folder raises :class:`~storm_tools.day.rundata.RunFolderError` naming the file and the field.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storm_tools import slo
from storm_tools.day import capacity, postmortem
from storm_tools.day.rundata import RunData, RunFolderError, Second, load
from storm_tools.statsd import Collector, Point

FORMAT = "storm-day-report/1"
CONNECT_SUCCESS_TARGET = 99.9  # issue 15: connect success >= 99.9 % and 0 acked messages lost
KINDS = {"c": "count", "count": "count", "g": "gauge", "gauge": "gauge", "d": "distribution", "h": "distribution",
         "ms": "distribution", "histogram": "distribution", "distribution": "distribution", "s": "set", "set": "set"}


# -- the adapter to storm_tools.slo ------------------------------------------------------------------------
def client_points(timeline: Sequence[Second]) -> list[Point]:
    """The SLIs' metrics as the clients saw them, one point per second and series (``at`` = ``t``)."""
    points = []
    for s in timeline:
        if s.connects_ok:
            points.append(Point("storm.gateway.connects", "count", float(s.connects_ok), ("result:ok",), s.t))
        for code, n in s.connects_failed.items():
            result = postmortem.connect_result(code)
            points.append(Point("storm.gateway.connects", "count", float(n), (f"result:{result}",), s.t))
        if s.acks:
            points.append(Point("storm.commands", "count", float(s.acks), ("op:publish", "result:ok"), s.t))
        if (ack := s.ack_ms.get("p99")) is not None:
            points.append(Point("storm.publish.ack_latency", "distribution", ack, (), s.t))
        if (dlv := s.deliver_ms.get("p99")) is not None:
            points.append(Point("storm.delivery.latency", "distribution", dlv, (), s.t))
    return points


def server_points(data: RunData) -> list[Point]:
    return [Point(m.metric, KINDS.get(m.type, m.type), v, tuple(f"{k}:{val}" for k, val in sorted(m.tags.items())),
                  m.t) for m in data.metrics for v in m.values]


def collectors(data: RunData) -> dict[str, Collector]:
    """``server`` (metrics.jsonl) and ``clients`` (timeline.jsonl) as :class:`Collector` s."""
    out = {}
    for name, points in (("server", server_points(data)), ("clients", client_points(data.timeline))):
        c = Collector()
        c.add(points)
        out[name] = c
    return out


def evaluate_slos(data: RunData, defs: slo.Definitions) -> list[dict[str, Any]]:
    """Each SLO of ``defs``, judged over the servers' metrics when they hold its metrics, else the clients'."""
    cols = collectors(data)
    lost = float(data.checks.lost) if data.checks else 0.0
    results = {name: {r.id: r for r in slo.evaluate(defs, col, extra_bad={"acked_delivered": lost})}
               for name, col in cols.items()}
    server_names = cols["server"].names()
    rows = []
    for s in defs.slos:
        source = "server" if s.metrics() & server_names else "clients"
        r = results[source][s.id]
        if r.met is None and source == "server" and results["clients"][s.id].met is not None:
            source, r = "clients", results["clients"][s.id]
        other = results["clients" if source == "server" else "server"][s.id]
        rows.append({**r.as_dict(), "source": source, "kind": s.kind,
                     "threshold_ms": s.threshold_ms if s.kind == "threshold" else None,
                     "slice_s": s.slice_s if s.kind == "threshold" else None,
                     "other_view": {"source": "clients" if source == "server" else "server", "value": other.value,
                                    "met": other.met, "good": other.good, "total": other.total}})
    return rows


def thresholds(defs: slo.Definitions) -> postmortem.Thresholds:
    return postmortem.Thresholds(
        ack_p99_ms=defs.get("publish_ack_p99").threshold_ms, deliver_p99_ms=defs.get("delivery_p99").threshold_ms,
        recover_s=defs.get("reconnect_steady").threshold_ms / 1000, targets={s.id: s.target for s in defs.slos},
        window=defs.window)


# -- the figures ---------------------------------------------------------------------------------------------
def _codes(seconds: Sequence[Second], attr: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in seconds:
        for code, n in getattr(s, attr).items():
            out[code] = out.get(code, 0) + n
    return dict(sorted(out.items()))


def _lat(seconds: Sequence[Second], attr: str) -> dict[str, Any]:
    p50 = [v for s in seconds if (v := getattr(s, attr).get("p50")) is not None]
    p99 = [(v, s.t) for s in seconds if (v := getattr(s, attr).get("p99")) is not None]
    worst = max(p99, default=None)
    return {"seconds": len(p99), "median_p50_ms": statistics.median(p50) if p50 else None,
            "median_p99_ms": statistics.median(v for v, _ in p99) if p99 else None,
            "worst_p99_ms": worst[0] if worst else None, "worst_p99_t": worst[1] if worst else None}


def summary(data: RunData) -> dict[str, Any]:
    tl = data.timeline
    peak = max(tl, key=lambda s: s.connections)
    plateau = [s for s in tl if s.phase == "plateau"] or list(tl)
    failed = _codes(tl, "connects_failed")
    ok = sum(s.connects_ok for s in tl)
    server_failed = sum(n for c, n in failed.items() if postmortem.connect_result(c) != "client")
    return {
        "duration_s": data.duration_s, "users": data.run.users, "peak_connections": peak.connections,
        "peak_t": peak.t,
        "peak_share_of_users": round(peak.connections / data.run.users, 4) if data.run.users else None,
        "connects_ok": ok, "connects_failed": failed, "connects_failed_server": server_failed,
        "connect_success_pct_timeline": round(100 * ok / (ok + server_failed), 4) if ok + server_failed else None,
        "reconnects": sum(s.reconnects for s in tl),
        "subscribe_retries": sum(s.subscribe_retries for s in tl),
        "publishes": sum(s.publishes for s in tl), "acks": sum(s.acks for s in tl),
        "deliveries": sum(s.deliveries for s in tl),
        "plateau_acks_per_s": round(sum(s.acks for s in plateau) / len(plateau), 1),
        "plateau_deliveries_per_s": round(sum(s.deliveries for s in plateau) / len(plateau), 1),
        "peak_deliveries_per_s": max(s.deliveries for s in tl),
        "errors": _codes(tl, "errors"), "disconnects": _codes(tl, "disconnects"),
        "connect_ms": _lat(tl, "connect_ms"), "ack_ms": _lat(tl, "ack_ms"), "deliver_ms": _lat(tl, "deliver_ms"),
        "offered": data.run.offered,
    }


def acceptance(data: RunData, summ: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's bar: the run completed, connect success >= 99.9 %, nothing acked lost, twice or out of order."""
    c = data.checks
    rows: list[dict[str, Any]] = [{"check": "run completed", "value": data.run.status, "target": "completed",
                                   "ok": data.run.status == "completed"}]
    if c is not None and c.connect_attempts:
        success = 100 * c.connect_success / c.connect_attempts
        how = f"{c.connect_success:,} of {c.connect_attempts:,} attempts (checks.json)"
    else:
        success, how = summ["connect_success_pct_timeline"], "timeline.jsonl, server's failures only"
    rows.append({"check": "connect success", "value": None if success is None else round(success, 4),
                 "target": f">= {CONNECT_SUCCESS_TARGET} %", "ok": None if success is None
                 else success >= CONNECT_SUCCESS_TARGET, "detail": how})
    if c is None:
        rows.append({"check": "loss, duplication, order", "value": None, "target": "0", "ok": None,
                     "detail": "checks.json missing"})
        return rows
    rows += [
        {"check": "acked messages lost", "value": c.lost, "target": 0, "ok": c.lost == 0,
         "detail": f"{c.acked:,} acked, {c.stored:,} stored"},
        {"check": "duplicates", "value": c.duplicates, "target": 0, "ok": c.duplicates == 0},
        {"check": "order inversions", "value": c.inversions, "target": 0, "ok": c.inversions == 0},
        {"check": "stored exactly once", "value": c.stored_exactly_once, "target": True,
         "ok": c.stored_exactly_once},
    ]
    return rows


def run_totals(data: RunData) -> dict[str, float]:
    """The run's events the incidents' budgets are shares of, from the clients' timeline like the incidents'
    bad events (the servers' counts, when the SLO table uses them, are not the same population)."""
    tl = data.timeline
    connects = sum(s.connects_ok for s in tl) + sum(postmortem.server_failed_connects(s) for s in tl)
    return {"connects": float(connects), "acks": float(sum(s.acks for s in tl)),
            "seconds_ack": float(sum(1 for s in tl if s.ack_ms.get("p99") is not None)),
            "seconds_deliver": float(sum(1 for s in tl if s.deliver_ms.get("p99") is not None)),
            "duration_s": data.duration_s, "incidents": float(max(1, len(data.incidents)))}


# -- the Markdown ----------------------------------------------------------------------------------------------
def _mark(ok: bool | None) -> str:
    return "no data" if ok is None else ("met" if ok else "**MISSED**")


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return f"{int(v):,}{unit}"
    if isinstance(v, float):
        return f"{v:,.2f}{unit}" if abs(v) < 1000 else f"{v:,.0f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def _codes_md(codes: dict[str, int]) -> str:
    return ", ".join(f"{k} × {v:,}" for k, v in codes.items() if v) or "none"


def render(doc: dict[str, Any], drafts: list[str]) -> str:
    run, summ, verdict = doc["run"], doc["summary"], doc["verdict"]
    lines = [f"# storm day — {run['profile']}, {run['users']:,} users, {run['minutes']:g} min", "",
             f"**Verdict: {'PASS' if verdict['ok'] else 'FAIL'}** — SLOs met {verdict['slos_met']} of "
             f"{verdict['slos_judged']} judged ({verdict['slos_no_data']} without data); acceptance "
             f"{'met' if verdict['acceptance_ok'] else 'NOT met'}; {len(doc['incidents'])} incidents, "
             f"{verdict['incidents_recovered']} back to steady state.", "",
             f"Run {run['status']}{': ' + run['error'] if run.get('error') else ''}; started {run['started_at']}, "
             f"ended {run.get('ended_at') or '—'}; {summ['duration_s']:.0f} s of timeline. Machine: "
             f"{_fmt(run['machine'].get('cores'))} cores, {_fmt(run['machine'].get('mem_gib'))} GiB. Topology: "
             f"{', '.join(f'{k} {v}' for k, v in run['topology'].items()) or '—'}. Profile file: "
             f"`{run.get('profile_file') or '—'}`."]
    offered = run.get("offered") or {}
    if offered:
        lines += ["", f"Offered load: {_fmt(offered.get('msgs_per_s'))} messages/s — {offered.get('note', '')}"]
    if doc["missing_files"]:
        lines += ["", f"Files the run did not leave: {', '.join(doc['missing_files'])}."]
    lines += ["", "## Acceptance (issue 15)", "", "| check | value | target | verdict | detail |",
              "|---|---:|---|---|---|"]
    for a in doc["acceptance"]:
        lines.append(f"| {a['check']} | {_fmt(a['value'])} | {a['target']} | {_mark(a['ok'])} "
                     f"| {a.get('detail', '')} |")
    lines += ["", "## SLOs (storm_tools/slos.yaml, evaluated by storm_tools/slo.py)", "",
              "| SLO | target | value | verdict | judged from | detail | the other view |",
              "|---|---:|---:|---|---|---|---|"]
    for r in doc["slos"]:
        if not r["total"]:
            detail = "no samples" + (" (the clients' time to steady state per incident is in the incidents table)"
                                     if r["id"] == "reconnect_steady" else "")
        elif r["kind"] == "threshold":
            detail = (f"p99 {_fmt(r.get('p99_ms'))} ms overall (threshold {r['threshold_ms']:g} ms); "
                      f"{_fmt(r['good'])} of {_fmt(r['total'])} {r['slice_s']}-s slices good")
        else:
            detail = f"{_fmt(r['good'])} good of {_fmt(r['total'])}"
        value = "—" if r["value"] is None else f"{r['value']:.3f} %"
        o = r["other_view"]
        other = "no data" if o["value"] is None else (f"{o['source']}: {o['value']:.3f} % ({_fmt(o['good'])} of "
                                                      f"{_fmt(o['total'])}), {_mark(o['met'])}")
        lines.append(f"| {r['id']} | {r['target']:g} % | {value} | {_mark(r['met'])} | {r['source']} | {detail} "
                     f"| {other} |")
    lines += ["", "*judged from* `server`: the processes' DogStatsD points (metrics.jsonl); `clients`: the load "
              "fleet's timeline (each second's p99 standing in for the samples: conservative). The verdict is the "
              "servers' when the run has their metrics, as Datadog would judge; the other view is shown beside it "
              "(a client sees the connects that never reached a server, a killed gateway's among them). A run "
              "shorter than a slice has one slice.", ""]
    lines += ["## Incidents", "", "| # | incident | injected | detected | mitigated | recovered | time to recover "
              "| users disconnected | publishes not acked | bad seconds |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, a in enumerate(doc["incidents"], 1):
        lines.append(f"| {i} | {a['name']} | {_t(a['start_t'])} | {_t(a['detection_t'])} | {_t(a['mitigation_t'])} "
                     f"| {_t(a['recovery_t'])} | {_t(a['time_to_recover_s'])} | {a['impact']['users_disconnected']:,} "
                     f"| {a['impact']['not_acked']:,} | {a['bad_seconds']} |")
    if not doc["incidents"]:
        lines.append("| — | no incident in this run | | | | | | | | |")
    lines += ["", "### Error budget burned per incident", "",
              "Share of the budget the whole run allowed ((1 − target) × the run's events, or seconds for a latency "
              "SLO at one-second resolution); in brackets, the share of the 30-day budget at the run's rate.", "",
              "| incident | " + " | ".join(r["id"] for r in doc["slos"]) + " |",
              "|---|" + "---:|" * len(doc["slos"])]
    for a in doc["incidents"]:
        cells = {b["slo"]: b for b in a["budget"]}
        lines.append(f"| {a['name']} | " + " | ".join(_budget_cell(cells.get(r["id"])) for r in doc["slos"]) + " |")
    lines += ["", "## Loss, duplication, order", ""]
    checks = doc["checks"]
    if checks is None:
        lines.append("checks.json is missing: the run did not reach its checks.")
    else:
        lines.append(f"{checks['acked']:,} messages acked, {checks['stored']:,} stored; lost {checks['lost']:,}, "
                     f"duplicates {checks['duplicates']:,}, order inversions {checks['inversions']:,}; stored exactly "
                     f"once: {_fmt(checks['stored_exactly_once'])}.")
        for kind, ids in checks.get("examples", {}).items():
            if ids:
                lines.append(f"- {kind} (first {len(ids)}): {', '.join(f'`{x}`' for x in ids)}")
    lines += ["", "## The run in figures", "", "| figure | value |", "|---|---:|",
              f"| peak connections | {summ['peak_connections']:,} at t = {summ['peak_t']:.0f} s "
              f"({_fmt(summ['peak_share_of_users'] and summ['peak_share_of_users'] * 100)} % of the users) |",
              f"| connects ok / failed (server's) | {summ['connects_ok']:,} / {summ['connects_failed_server']:,} |",
              f"| failed connects by code | {_codes_md(summ['connects_failed'])} |",
              f"| reconnects | {summ['reconnects']:,} |",
              f"| subscribes asked again on the same connection | {summ['subscribe_retries']:,} |",
              f"| publishes / acks / deliveries | {summ['publishes']:,} / {summ['acks']:,} / {summ['deliveries']:,} |",
              f"| plateau acks/s, deliveries/s | {summ['plateau_acks_per_s']:,} / "
              f"{summ['plateau_deliveries_per_s']:,} |",
              f"| errors by code | {_codes_md(summ['errors'])} |",
              f"| disconnects by code | {_codes_md(summ['disconnects'])} |"]
    for key, name in (("connect_ms", "connect"), ("ack_ms", "publish → ack"), ("deliver_ms", "publish → delivery")):
        lat = summ[key]
        at = "" if lat["worst_p99_t"] is None else f" at t = {lat['worst_p99_t']:.0f} s"
        lines.append(f"| {name}: median p50 / median p99 / worst p99 (ms) | {_fmt(lat['median_p50_ms'])} / "
                     f"{_fmt(lat['median_p99_ms'])} / {_fmt(lat['worst_p99_ms'])}{at} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{Path(p).stem}]({p})" + "\n" for p in doc["plots"]] or ["(no plot: matplotlib is not installed)"]
    lines += _capacities_md(doc["capacities"])
    lines += ["", "## Post-mortem drafts", ""] + (drafts or ["No incident in this run.", ""])
    return "\n".join(lines).rstrip() + "\n"


def _t(v: float | None) -> str:
    return "—" if v is None else f"{postmortem.secs(v)} s"


def _budget_cell(b: dict[str, Any] | None) -> str:
    if b is None or b["share_of_run_budget"] is None:
        return "n/a"
    return f"{postmortem.pct(b['share_of_run_budget'])} ({postmortem.pct(b['share_of_window_budget'])})"


def _capacities_md(cap: dict[str, Any]) -> list[str]:
    figures, run = cap["capacities"], cap["run"]
    lines = ["", "## Capacities for the bill (`storm cost --from` this folder)", "",
             f"Steady window: {run['window_s']} s (the plateau less each incident and the 30 s after it): "
             f"{_fmt(run['acked_publishes_per_s'])} acked publishes/s, {_fmt(run['deliveries_per_s'])} deliveries/s, "
             f"{_fmt(run['mean_connections'])} connections; cores busy per role: "
             f"{', '.join(f'{k} {v:.2f}' for k, v in run['cores'].items()) or 'none sampled'}.", "",
             "| headline | value |", "|---|---:|"]
    for key in ("connections_per_gib", "connections_per_gateway_core", "deliveries_per_s_per_gateway_core",
                "publishes_per_s_per_pulsar_core", "writes_per_s_per_db_core", "publishes_per_s_per_consumers_core",
                "hazelcast_cores", "postgres_cores"):
        lines.append(f"| {key.replace('_', ' ')} | {_fmt(run.get(key))} |")
    lines += ["", "| capacity | value | from | source |", "|---|---:|---|---|"]
    for key, f in figures.items():
        lines.append(f"| {key} | {_fmt(f['value'])} | {f['origin']} | {f.get('source', '')} |")
    lines += [f"- {n}" for n in run["notes"]]
    return lines


# -- the entry point -------------------------------------------------------------------------------------------
def write_report(folder: Path, *, plots: bool = True, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read ``folder`` (a storm day run folder), write report.json, report.md and plots/*.png into it; return
    a summary of what was written and the verdict."""
    folder = Path(folder)
    say = progress or (lambda m: print(f"storm day report: {m}", file=sys.stderr, flush=True))
    say(f"reading {folder}")
    data = load(folder)
    defs = slo.load()
    th = thresholds(defs)
    slos = evaluate_slos(data, defs)
    totals = run_totals(data)
    say(f"analysing {len(data.incidents)} incidents")
    analyses = [postmortem.analyse(i, data.timeline, th, data.checks, totals) for i in data.incidents]
    from storm_tools.cost import DEFAULT_CAPACITIES, load_json

    caps = capacity.derive(data, load_json(DEFAULT_CAPACITIES))
    summ = summary(data)
    accept = acceptance(data, summ)
    plot_paths: list[str] = []
    if plots:
        try:
            from storm_tools.day import plots as plots_module
        except ImportError as exc:  # matplotlib is the `day` extra
            say(f"no plots: {exc} (pip install 'storm-chat[day]')")
        else:
            recoveries = {a.name: a.recovery_t for a in analyses}
            limits = {"ack_p99_ms": th.ack_p99_ms, "deliver_p99_ms": th.deliver_p99_ms}
            written = plots_module.write_all(data, recoveries, limits, folder / "plots", say)
            plot_paths = [str(p.relative_to(folder)) for p in written]
    judged = [r for r in slos if r["met"] is not None]
    accept_ok = all(a["ok"] is True for a in accept)
    verdict = {"slos_met": sum(1 for r in judged if r["met"]), "slos_judged": len(judged),
               "slos_no_data": len(slos) - len(judged), "acceptance_ok": accept_ok,
               "incidents_recovered": sum(1 for a in analyses if a.recovery_t is not None)}
    verdict["ok"] = accept_ok and verdict["slos_met"] == verdict["slos_judged"]
    doc = {"format": FORMAT, "folder": str(folder), "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "verdict": verdict, "run": asdict(data.run), "summary": summ, "acceptance": accept, "slos": slos,
           "incidents": [a.as_dict() for a in analyses],
           "checks": asdict(data.checks) if data.checks else None, "capacities": caps, "plots": plot_paths,
           "missing_files": list(data.missing)}
    say("writing report.json and report.md")
    (folder / "report.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    drafts = [postmortem.render(a, i) for i, a in enumerate(analyses, 1)]
    (folder / "report.md").write_text(render(doc, drafts))
    return {"report_json": str(folder / "report.json"), "report_md": str(folder / "report.md"),
            "plots": [str(folder / p) for p in plot_paths], "verdict": verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storm_tools.day.report",
                                     description="write report.json, report.md and plots/ for a storm day run folder")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs (no matplotlib needed)")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.folder, plots=not args.no_plots)
    except RunFolderError as exc:
        print(f"storm day report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0 if out["verdict"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
