"""One post-mortem draft per incident of a `storm day` run, from the clients' timeline (docs/storm-day.md).

For each incident of incidents.json, :func:`analyse` finds in timeline.jsonl (no I/O here):

* **detection**: the first second at or after the injection where an SLO indicator is bad — ack or delivery
  p99 over the SLO threshold (storm_tools/slos.yaml), a server-side error, publishes with no ack, a failed
  connect the server is accountable for, an abnormal disconnect, or connections under 99 % of their
  expected level (:class:`Level`: the level before the incident, following the profile's curve when the
  timeline carries its ``target``; not judged in the decline without it);
* **mitigation**: the end of the injected fault (``end_t``: the process restarted, the toxic removed);
* **recovery**: the first second at or after the mitigation (and after the detection) from which, for
  :data:`STEADY_S` seconds in a row, connections are back to >= 99 % of that level and the p99s are within
  the SLO (no detection: recovered at once).  Seconds after the load ended (``settle``) are not judged.  When
  most of the seconds before the injection were bad already, the draft says so: detection and recovery are
  then not the incident's alone;
* **impact**: users disconnected (the deeper of the drop under the expected level and the sessions the
  server ended abnormally) and reconnects, messages published and not acked, acks in seconds whose p99
  broke the SLO, errors and failed connects, from the injection to the recovery (or the end of the run);
* **error budget burned**: per SLO, the bad events (or bad seconds for a latency SLO, at one-second
  resolution) of that span, as a share of the budget the whole run allowed (``(1 - target) x events``) and of
  the SLO's 30-day window at the run's rate.

:func:`render` writes the draft; the cause, the lessons and the actions are for a person to add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from storm_tools.day.rundata import Checks, Incident, Second

STEADY_S = 5  # seconds in a row that make a recovery
BASELINE_S = 10  # seconds before the injection whose connections make the pre-incident level
CONNECTIONS_SHARE = 0.99
WINDOW_S = {"7d": 7 * 86400, "30d": 30 * 86400, "90d": 90 * 86400}
# Error codes that are the client's doing (docs/protocol.md); any other error counts against the server.
CLIENT_ERRORS = frozenset({"unauthenticated", "malformed", "rate_limited", "bad_request", "unknown_op",
                           "too_many_subscriptions", "too_large", "quota_exceeded", "not_subscribed",
                           "already_authenticated", "forbidden", "gone"})
ABNORMAL_CLOSES = frozenset({"1001", "1006", "1011", "1012", "1013", "1014"})


def connect_result(code: str) -> str:
    """The ``storm.gateway.connects`` result a client-seen connect failure stands for: ``restarting`` (a
    draining or restarting gateway: 503, close 1012), ``internal`` (the server's: 5xx, close 1011/1013, a
    refused, reset or timed-out connection), or ``client`` (a 4xx refusal or a 4xxx auth close: the
    client's, not counted by the connect_success SLO)."""
    if code in ("503", "1012"):
        return "restarting"
    if code.isdigit() and (400 <= int(code) < 500 or 4000 <= int(code) < 5000):
        return "client"
    return "internal"


def server_failed_connects(s: Second) -> int:
    return sum(n for code, n in s.connects_failed.items() if connect_result(code) != "client")


def server_errors(s: Second) -> int:
    return sum(n for code, n in s.errors.items() if code not in CLIENT_ERRORS)


def abnormal_disconnects(s: Second) -> int:
    return sum(n for code, n in s.disconnects.items() if code in ABNORMAL_CLOSES)


@dataclass(frozen=True)
class Thresholds:
    """The SLO thresholds the indicators are judged by (from storm_tools/slos.yaml), and their targets."""

    ack_p99_ms: float
    deliver_p99_ms: float
    recover_s: float  # reconnect_steady: the resume gap a client may see
    targets: dict[str, float] = field(default_factory=dict)  # SLO id -> target percent
    window: str = "30d"


def over(ms: dict[str, float | None], threshold: float) -> float | None:
    """The second's p99 when it is over ``threshold``, else None."""
    p99 = ms.get("p99")
    return p99 if p99 is not None and p99 > threshold else None


def problems(s: Second, th: Thresholds, level: float | None) -> list[str]:
    """Why second ``s`` is bad (empty: it is good); ``level``: the connections expected (None: not judged)."""
    out = []
    if (ack := over(s.ack_ms, th.ack_p99_ms)) is not None:
        out.append(f"ack p99 {ack:.0f} ms > {th.ack_p99_ms:.0f} ms")
    if (dlv := over(s.deliver_ms, th.deliver_p99_ms)) is not None:
        out.append(f"delivery p99 {dlv:.0f} ms > {th.deliver_p99_ms:.0f} ms")
    if s.publishes > 0 and s.acks == 0:
        out.append(f"{s.publishes} publishes, no ack")
    if server_errors(s):
        out.append(f"{server_errors(s)} server errors")
    if server_failed_connects(s):
        out.append(f"{server_failed_connects(s)} connects failed")
    if abnormal_disconnects(s):
        out.append(f"{abnormal_disconnects(s)} abnormal disconnects")
    if level and s.connections < CONNECTIONS_SHARE * level:
        out.append(f"connections {s.connections:,} < 99 % of {level:,.0f}")
    return out


def steady(s: Second, th: Thresholds, level: float | None) -> bool:
    ack, dlv = s.ack_ms.get("p99"), s.deliver_ms.get("p99")
    return ((not level or s.connections >= CONNECTIONS_SHARE * level)
            and (ack is None or ack <= th.ack_p99_ms) and (dlv is None or dlv <= th.deliver_p99_ms)
            and not (s.publishes > 0 and s.acks == 0))


@dataclass
class Budget:
    slo: str
    target: float
    unit: str  # events | seconds
    bad: float | None  # None: not attributable to one incident
    run_budget: float  # bad units the whole run allowed
    share_of_run_budget: float | None
    share_of_window_budget: float | None
    note: str = ""


@dataclass
class Analysis:
    name: str
    experiment: str
    description: str
    phase: str
    start_t: float
    end_t: float
    baseline_connections: float | None
    detection_t: float | None
    detected_by: list[str]
    mitigation_t: float
    recovery_t: float | None
    time_to_detect_s: float | None
    time_to_recover_s: float | None  # from the injection
    recovery_after_mitigation_s: float | None
    impact: dict[str, Any]
    budget: list[Budget]
    held: list[str]
    failed: list[str]
    bad_seconds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Level:
    """The connections expected at each second after an incident's injection.

    Before the injection the run held ``baseline`` connections (the median of the :data:`BASELINE_S` seconds
    before).  When the timeline carries the profile's ``target`` (users the curve wants connected), the
    level follows it at the share of the target connected before; without it the level is the baseline,
    except in the decline, where users leave by design and the level is not judged (the incident shows
    there as abnormal disconnects and failed connects)."""

    def __init__(self, timeline: Sequence[Second], start_t: float) -> None:
        before = [s for s in timeline if start_t - BASELINE_S <= s.t < start_t]
        counts = sorted(s.connections for s in before)
        self.baseline: float | None = float(counts[len(counts) // 2]) if counts else None
        shares = sorted(s.connections / s.target for s in before if s.target)
        self.share: float | None = min(1.0, shares[len(shares) // 2]) if shares else None

    def at(self, s: Second) -> float | None:
        if self.share is not None and s.target is not None:
            return self.share * s.target
        return None if s.phase == "decline" else self.baseline


def _sum_codes(seconds: Sequence[Second], attr: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in seconds:
        for code, n in getattr(s, attr).items():
            out[code] = out.get(code, 0) + n
    return out


def _recovery(after: Sequence[Second], th: Thresholds, level: Level, from_t: float) -> float | None:
    """The first second at or after ``from_t`` that starts :data:`STEADY_S` steady seconds in a row."""
    run_start: float | None = None
    for s in after:
        if s.t < from_t:
            continue
        if steady(s, th, level.at(s)):
            run_start = s.t if run_start is None else run_start
            if s.t - run_start + 1 >= STEADY_S:
                return run_start
        else:
            run_start = None
    return None


def analyse(incident: Incident, timeline: Sequence[Second], th: Thresholds, checks: Checks | None,
            run_totals: dict[str, float]) -> Analysis:
    """The facts of one incident (module docstring).  ``run_totals`` holds the run's SLO event counts
    (``connects``, ``acks``, ``seconds_ack``, ``seconds_deliver``, ``duration_s``) the budgets are shares of.
    Seconds after the load ended (phase ``settle``) are not judged: a quiet system is not a recovered one."""
    level = Level(timeline, incident.start_t)
    baseline = level.baseline
    after = [s for s in timeline if s.t >= incident.start_t and s.phase != "settle"]
    before = [s for s in timeline if incident.start_t - BASELINE_S <= s.t < incident.start_t]
    bad_before = sum(1 for s in before if problems(s, th, level.at(s)))
    detection = next(((s.t, p) for s in after if (p := problems(s, th, level.at(s)))), None)
    if detection is None:
        recovery_t: float | None = incident.start_t
        span_end = incident.end_t  # nothing went bad: the impact is what the fault's own span shows
    else:
        recovery_t = _recovery(after, th, level, max(incident.end_t, detection[0] + 1))  # after the bad second
        span_end = max(recovery_t, incident.end_t) if recovery_t is not None else float("inf")
    span = [s for s in after if s.t < span_end] or list(after[:1])
    bad = [s for s in span if problems(s, th, level.at(s))]
    lowest = min((s.connections for s in span), default=0)
    missing = [(lv - s.connections, lv) for s in span if (lv := level.at(s)) is not None]
    worst_missing = max(missing, default=(0.0, 0.0))
    abnormal = sum(abnormal_disconnects(s) for s in span)
    published, acked = sum(s.publishes for s in span), sum(s.acks for s in span)
    slow_ack = [s for s in span if over(s.ack_ms, th.ack_p99_ms) is not None]
    slow_dlv = [s for s in span if over(s.deliver_ms, th.deliver_p99_ms) is not None]
    failed_connects = sum(server_failed_connects(s) for s in span)
    impact = {
        "span_s": [span[0].t if span else incident.start_t, span[-1].t + 1 if span else incident.end_t],
        # the deeper of the drop under the expected level and the sessions the server ended abnormally
        "users_disconnected": max(0, round(worst_missing[0]), abnormal),
        "users_disconnected_share": round(max(0.0, worst_missing[0], abnormal) / worst_missing[1], 4)
        if worst_missing[1] else None,
        "level_drop": max(0, round(worst_missing[0])), "abnormal_disconnects": abnormal,
        "reconnects": sum(s.reconnects for s in span),
        "lowest_connections": lowest,
        "published": published, "acked": acked, "not_acked": max(0, published - acked),
        "acked_in_slow_seconds": sum(s.acks for s in slow_ack),
        "deliveries": sum(s.deliveries for s in span),
        "server_errors": sum(server_errors(s) for s in span),
        "errors": _sum_codes(span, "errors"), "connects_failed": _sum_codes(span, "connects_failed"),
        "server_failed_connects": failed_connects, "disconnects": _sum_codes(span, "disconnects"),
        "worst_ack_p99_ms": max((v for s in span if (v := s.ack_ms.get("p99")) is not None), default=None),
        "worst_deliver_p99_ms": max((v for s in span if (v := s.deliver_ms.get("p99")) is not None), default=None),
        "bad_seconds_before": bad_before, "seconds_before": len(before),
    }
    budget = _budgets(th, run_totals, failed_connects, len(slow_ack), len(slow_dlv), checks,
                      recovery_t, incident.start_t)
    time_to_recover = None if recovery_t is None else max(0.0, recovery_t - incident.start_t)
    held, failed = _verdicts(impact, th, slow_ack, slow_dlv, failed_connects, time_to_recover, checks)
    if before and bad_before * 2 > len(before):
        failed.insert(0, f"already bad before the injection ({bad_before} of the {len(before)} seconds before): "
                         "detection and recovery are not this incident's alone")
    return Analysis(
        name=incident.name, experiment=incident.experiment, description=incident.description,
        phase=next((s.phase for s in after[:1]), ""), start_t=incident.start_t, end_t=incident.end_t,
        baseline_connections=baseline, detection_t=detection[0] if detection else None,
        detected_by=detection[1] if detection else [], mitigation_t=incident.end_t, recovery_t=recovery_t,
        time_to_detect_s=None if detection is None else detection[0] - incident.start_t,
        time_to_recover_s=time_to_recover,
        recovery_after_mitigation_s=None if recovery_t is None else max(0.0, recovery_t - incident.end_t),
        impact=impact, budget=budget, held=held, failed=failed, bad_seconds=len(bad))


def _budget(slo: str, th: Thresholds, unit: str, bad: float | None, total: float, duration_s: float,
            note: str = "") -> Budget:
    target = th.targets.get(slo, 99.9)
    allowed = (1 - target / 100) * total
    window = WINDOW_S.get(th.window, 30 * 86400)
    share = None if bad is None or allowed <= 0 else round(bad / allowed, 4)
    share_window = None if share is None or duration_s <= 0 else round(share * duration_s / window, 6)
    return Budget(slo, target, unit, bad, round(allowed, 3), share, share_window, note)


def _budgets(th: Thresholds, totals: dict[str, float], failed_connects: int, slow_ack: int, slow_dlv: int,
             checks: Checks | None, recovery_t: float | None, start_t: float) -> list[Budget]:
    duration = totals.get("duration_s", 0.0)
    if checks is None:
        lost, note = None, "checks.json missing"
    elif checks.lost == 0:
        lost, note = 0.0, "no acked message lost in the run"
    else:
        lost, note = None, f"the run lost {checks.lost} acked messages; not attributable to one incident"
    steady_bad = 1.0 if recovery_t is None else float(recovery_t - start_t > th.recover_s)
    return [
        _budget("connect_success", th, "events", float(failed_connects), totals.get("connects", 0.0), duration,
                "failed connects the server is accountable for"),
        _budget("acked_delivered", th, "events", lost, totals.get("acks", 0.0), duration, note),
        _budget("publish_ack_p99", th, "seconds", float(slow_ack), totals.get("seconds_ack", 0.0), duration,
                "seconds whose client ack p99 broke the threshold (Datadog judges 5-minute slices)"),
        _budget("delivery_p99", th, "seconds", float(slow_dlv), totals.get("seconds_deliver", 0.0), duration,
                "seconds whose client delivery p99 broke the threshold (Datadog judges 5-minute slices)"),
        _budget("reconnect_steady", th, "incidents", steady_bad, totals.get("incidents", 1.0), duration,
                f"the incident counts as bad when steady state took over {th.recover_s:g} s (client view; "
                "the server's resume_gap is in metrics.jsonl when the run sent metrics)"),
    ]


def _verdicts(impact: dict[str, Any], th: Thresholds, slow_ack: list[Second],
              slow_dlv: list[Second], failed_connects: int, ttr: float | None,
              checks: Checks | None) -> tuple[list[str], list[str]]:
    held: list[str] = []
    failed: list[str] = []

    def judge(ok: bool, good: str, bad: str) -> None:
        (held if ok else failed).append(good if ok else bad)

    judge(not slow_ack, f"ack p99 stayed within {th.ack_p99_ms:.0f} ms",
          f"ack p99 over {th.ack_p99_ms:.0f} ms for {len(slow_ack)} s (worst {impact['worst_ack_p99_ms']:.0f} ms)"
          if slow_ack else "")
    judge(not slow_dlv, f"delivery p99 stayed within {th.deliver_p99_ms:.0f} ms",
          f"delivery p99 over {th.deliver_p99_ms:.0f} ms for {len(slow_dlv)} s "
          f"(worst {impact['worst_deliver_p99_ms']:.0f} ms)" if slow_dlv else "")
    share = impact["users_disconnected_share"]
    judge(share <= 1 - CONNECTIONS_SHARE if share is not None else not impact["abnormal_disconnects"],
          "connections stayed at 99 % of their level or more",
          f"{impact['users_disconnected']:,} users lost their connection"
          + (f" ({share:.1%})" if share is not None else ""))
    judge(failed_connects == 0, "every connect the server is accountable for succeeded",
          f"{failed_connects:,} connects failed on the server's side")
    judge(impact["not_acked"] == 0, "every publish was acked",
          f"{impact['not_acked']:,} publishes not acked in the span")
    judge(impact["server_errors"] == 0, "no server error", f"{impact['server_errors']:,} server errors")
    if ttr is None:
        failed.append("did not reach steady state before the run ended")
    else:
        judge(ttr <= th.recover_s, f"steady again {ttr:.0f} s after the injection (within {th.recover_s:g} s)",
              f"steady again only {ttr:.0f} s after the injection (over {th.recover_s:g} s)")
    if checks is not None:
        judge(checks.lost == 0, "no acked message lost (whole run)", f"{checks.lost} acked messages lost (whole run)")
        judge(checks.duplicates == 0 and checks.inversions == 0, "no duplicate, no order inversion (whole run)",
              f"{checks.duplicates} duplicates, {checks.inversions} inversions (whole run)")
    return held, failed


def secs(value: float | None) -> str:
    """A time in seconds as the report prints it: whole seconds bare, others to a tenth."""
    if value is None:
        return "—"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _t(value: float | None) -> str:
    return "—" if value is None else f"{secs(value)} s"


def render(a: Analysis, number: int) -> str:
    """The Markdown draft of one incident's post-mortem."""
    imp = a.impact
    lines = [f"### {number}. {a.name} — post-mortem draft", "",
             f"*Drafted by `storm day` from the clients' measurements (experiment `{a.experiment}`). "
             "Root cause, lessons and actions are for a person to write.*", "",
             f"**Summary.** {a.description or a.name}. Injected at t = {secs(a.start_t)} s"
             f"{f' ({a.phase})' if a.phase else ''} with {a.baseline_connections or 0:,.0f} users connected, "
             f"removed at t = {secs(a.end_t)} s. "]
    if a.detection_t is None:
        lines[-1] += "No SLO indicator went bad: the clients did not notice it."
    else:
        rec = (f"steady again at t = {secs(a.recovery_t)} s, {_t(a.time_to_recover_s)} after the injection"
               if a.recovery_t is not None else "not steady again before the run ended")
        lines[-1] += f"Detected {_t(a.time_to_detect_s)} after the injection ({'; '.join(a.detected_by)}); {rec}."
    lines += ["", "**Timeline** (seconds since the run started)", "", "| t | event |", "|---:|---|",
              f"| {secs(a.start_t)} | fault injected: {a.description or a.experiment} |"]
    events = []
    if a.detection_t is not None:
        events.append((a.detection_t, f"detected: {'; '.join(a.detected_by)}"))
    events.append((a.mitigation_t, "mitigation: the fault ended (process back, toxic removed)"))
    if a.recovery_t is not None and a.detection_t is not None:
        events.append((a.recovery_t, f"recovered: connections >= 99 % of the level before and p99s within the SLO "
                                     f"for {STEADY_S} s"))
    lines += [f"| {secs(t)} | {text} |" for t, text in sorted(events, key=lambda e: e[0])]
    share = imp["users_disconnected_share"]
    lines += ["", f"Time to detect {_t(a.time_to_detect_s)}; time to recover {_t(a.time_to_recover_s)} from the "
              f"injection, {_t(a.recovery_after_mitigation_s)} after the mitigation; {a.bad_seconds} bad seconds.",
              "", "**Impact** (from the injection to the recovery)", "",
              f"- users: {imp['users_disconnected']:,} disconnected at the worst"
              f"{f' ({share:.1%} of those connected)' if share is not None else ''} ({imp['level_drop']:,} under "
              f"the expected level, {imp['abnormal_disconnects']:,} sessions ended abnormally), "
              f"{imp['reconnects']:,} reconnects, {imp['server_failed_connects']:,} connects failed on the "
              "server's side",
              f"- messages: {imp['published']:,} published, {imp['acked']:,} acked, {imp['not_acked']:,} not acked; "
              f"{imp['acked_in_slow_seconds']:,} acked in seconds whose ack p99 broke the SLO; "
              f"{imp['deliveries']:,} deliveries",
              f"- errors: {_codes(imp['errors'])}; failed connects: {_codes(imp['connects_failed'])}; "
              f"disconnects: {_codes(imp['disconnects'])}",
              "", "**Error budget burned**", "", "| SLO | target | bad | run's budget | share of the run's budget "
              "| share of the 30-day budget | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for b in a.budget:
        lines.append(f"| {b.slo} | {b.target:g} % | {_num(b.bad)} {b.unit} | {b.run_budget:g} "
                     f"| {pct(b.share_of_run_budget)} | {pct(b.share_of_window_budget)} | {b.note} |")
    lines += ["", "**What held**", ""] + [f"- {h}" for h in a.held or ["nothing"]]
    lines += ["", "**What did not**", ""] + [f"- {f}" for f in a.failed or ["nothing"]]
    lines += ["", "**Root cause, lessons, actions:** _to write_", ""]
    return "\n".join(lines)


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{k} × {v:,}" for k, v in sorted(codes.items()) if v) or "none"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def pct(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v >= 10:
        return f"{v:,.0f}×"  # a short run allows few bad events: an incident burns many times its budget
    return f"{v:.1%}" if v == 0 or v >= 0.01 else f"{100 * v:.2g}%"  # small shares keep two digits
