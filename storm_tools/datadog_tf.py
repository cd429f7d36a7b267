"""Generate the Datadog objects as Terraform from storm_tools/slos.yaml and the catalogue (docs/observability.md).

    python -m storm_tools.datadog_tf            # write terraform/datadog/*.tf.json and the generated parts
                                                # of docs/observability.md
    python -m storm_tools.datadog_tf --check    # exit 1 when a checked-in file differs (the test does this)

Written, never edited by hand:

* ``slos.tf.json``: one ``datadog_service_level_objective`` per SLO: count-based (``query`` numerator and
  denominator) for ratio SLIs, ``time_slice`` for percentile thresholds;
* ``monitors.tf.json``: per SLO two burn-rate ``slo alert`` monitors (14.4x over 1 h with a 5 min short
  window, 6x over 6 h with 30 min), and the symptom monitors of :data:`SYMPTOMS`, each with its runbook;
* ``dashboard.tf.json``: the dashboard as a ``datadog_dashboard_json`` (its JSON built here);
* ``main.tf.json``: the provider requirement and the ``env`` variable every query filters on (no provider
  block: the caller configures it, so terraform/modules/datadog can use this folder as a module).

Every metric a query names comes from the catalogue (tests/unit/test_observability.py checks it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storm.metrics_catalogue import markdown_table
from storm_tools.slo import Definitions, Slo, Term, load

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "terraform" / "datadog"
DOC = ROOT / "docs" / "observability.md"
ENV = "${var.env}"
BURN_RATES = (("fast", 14.4, "1h", "5m", "page"), ("slow", 6.0, "6h", "30m", "ticket"))
RUNBOOK = "https://github.com/storm-chat/storm/blob/main/docs/observability.md"


@dataclass(frozen=True, slots=True)
class Symptom:
    key: str
    name: str
    query: str  # `{env}` is replaced by the environment filter
    critical: float
    meaning: str
    runbook: str
    warning: float | None = None


SYMPTOMS: tuple[Symptom, ...] = (
    Symptom("connections_drop", "Gateway connections dropped more than 20 % in 5 minutes",
            "pct_change(avg(last_5m),last_5m):sum:storm.gateway.connections{{{env}}} < -20", -20,
            "Open connections across all gateways fell by more than a fifth within 5 minutes.",
            "Look at `storm.gateway.disconnects` by `code` on the dashboard. 1012 means a gateway drained (a "
            "deploy or autoscaling: expected, clients come back within seconds); `client` (the peer went away "
            "first) from every gateway at once points at the load balancer or the network; one gateway's "
            "connections gone entirely means that process died: check it restarted (`/healthz`) and that "
            "`storm.gateway.resumes` rises as its clients come back elsewhere."),
    Symptom("loop_lag", "Event-loop lag p99 above 100 ms",
            "avg(last_5m):p99:storm.process.loop_lag{{{env}}} by {{service,instance}} > 100", 100,
            "A process's event loop answers late: every socket it serves waits with it.",
            "Find the process (`instance`). CPU at 100 %: it is overloaded, add gateways or move load; CPU "
            "low: something blocks the loop (a synchronous call, a huge frame, GC: compare "
            "`storm.process.gc_pause`). Take a py-spy dump of the PID before restarting it.", 50),
    Symptom("consumer_backlog", "Persistence backlog growing",
            "change(avg(last_10m),last_10m):sum:storm.consumer.backlog{{{env}}} > 5000", 5000,
            "Records wait longer and longer for the persistence worker: history lags behind live delivery.",
            "Check `storm.consumer.batch_latency` and `storm.store.tx_latency`: a slow database slows every "
            "batch (look at CockroachDB/PostgreSQL); `storm.store.serialization_retries` rising means "
            "contention. If the store is healthy, run more consumer processes (the subscription is shared).",
            2000),
    Symptom("dead_letters", "Records dead-lettered",
            "sum(last_5m):sum:storm.consumer.dead_lettered{{{env}}}.as_count() > 0", 0,
            "The persistence worker gave up on records: those messages are not in history.",
            "Read the consumers' ERROR lines `dead-lettering ws=… channel=… offset=…` for the reason. A poison "
            "record (undecodable) is a bug to fix; repeated write failures point at the store. The records "
            "stay on the workspace's `channels/persistence.dlq` topic; replay them once the cause is fixed."),
    Symptom("auth_failures", "Authentication failure spike",
            "sum(last_5m):sum:storm.auth.failures{{{env}}}.as_count() / "
            "sum:storm.gateway.connects{{{env}}}.as_count() > 0.2", 0.2,
            "More than a fifth of connection attempts fail authentication.",
            "Split `storm.auth.failures` by `reason`. `invalid_token` from everyone at once: the identity "
            "provider's keys changed (JWKS) or clocks drift; from few sources: a misconfigured client or "
            "credential stuffing (check the per-IP refusals, `result:per_ip`). `timeout`: clients connect and "
            "never authenticate.", 0.1),
    Symptom("reconnect_storm", "Reconnect storm",
            "sum(last_5m):sum:storm.gateway.resumes{{{env}}}.as_count() / "
            "avg:storm.gateway.connections{{{env}}} > 1", 1,
            "In 5 minutes there were more resumes than open connections: clients reconnect over and over.",
            "Look at `storm.gateway.disconnects` by `code`: 4008 (slow consumers, see the overflow monitor), "
            "1012 (a drain loop: deploys or an autoscaler flapping), 4002 (idle timeouts: heartbeats lost "
            "behind a proxy). Clients back off with jitter; if they do not, the SDK version is suspect.", 0.5),
    Symptom("outbox_overflows", "Outgoing queues overflowing",
            "sum(last_5m):sum:storm.outbox.overflows{{{env}}}.as_count() > 100", 100,
            "Connections were closed with 4008 because their outgoing queue filled up.",
            "A few are normal (clients on bad networks). Many at once: the gateways cannot write fast enough "
            "(CPU, `storm.process.loop_lag`) or a channel's traffic exceeds what clients can read. Compare "
            "`storm.fanout.deliveries` with the usual rate.", 20),
)


# -- queries -------------------------------------------------------------------------------------------
def tag_filter(term: Term, env: str) -> str:
    parts = [f"env:{env}"]
    for name, values in term.tags:
        parts.append(f"{name}:{values[0]}" if len(values) == 1 else f"{name} IN ({','.join(values)})")
    return "{" + " AND ".join(parts) + "}" if any(len(v) > 1 for _, v in term.tags) else "{" + ",".join(parts) + "}"


def count_query(terms: tuple[Term, ...], env: str = ENV) -> str:
    text = ""
    for i, term in enumerate(terms):
        sign = ("- " if term.sign < 0 else "+ ") if i else ("-" if term.sign < 0 else "")
        text += f"{' ' if i else ''}{sign}sum:{term.metric}{tag_filter(term, env)}.as_count()"
    return text


def percentile_query(slo: Slo, env: str = ENV) -> str:
    return f"p{int(slo.percentile)}:{slo.metric}{{env:{env}}}"


# -- resources -----------------------------------------------------------------------------------------
def slo_resource(slo: Slo, window: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": slo.name,
        "description": f"{slo.description} Defined in storm_tools/slos.yaml ({slo.id}); generated by "
                       "storm_tools/datadog_tf.py.",
        "thresholds": [{"timeframe": window, "target": slo.target}],
        "timeframe": window,
        "target_threshold": slo.target,
        "tags": ["service:storm", f"slo:{slo.id}", "managed-by:terraform", f"env:{ENV}"],
    }
    if slo.kind == "ratio":
        body["type"] = "metric"
        body["query"] = {"numerator": count_query(slo.good), "denominator": count_query(slo.total)}
    else:
        body["type"] = "time_slice"
        body["sli_specification"] = {"time_slice": {
            "comparator": "<=", "threshold": slo.threshold_ms, "query_interval_seconds": slo.slice_s,
            "query": {"formula": {"formula_expression": "query1"},
                      "query": [{"metric_query": {"name": "query1", "data_source": "metrics",
                                                  "query": percentile_query(slo)}}]},
        }}
    return body


def burn_rate_monitor(slo: Slo, window: str, speed: str, factor: float, long: str, short: str,
                      severity: str) -> dict[str, Any]:
    ref = f"${{datadog_service_level_objective.{slo.id}.id}}"
    return {
        "name": f"{slo.name}: error budget burning {factor}x ({long}/{short})",
        "type": "slo alert",
        "query": f'burn_rate("{ref}").over("{window}").long_window("{long}").short_window("{short}") > {factor}',
        "message": (f"{slo.name} burns its {window} error budget {factor}x faster than sustainable ({speed} "
                    f"burn, {severity}). Runbook: {RUNBOOK}#slo-{slo.id.replace('_', '-')}"),
        "monitor_thresholds": {"critical": factor},
        "tags": ["service:storm", f"slo:{slo.id}", f"burn:{speed}", f"severity:{severity}", "managed-by:terraform",
                 f"env:{ENV}"],
    }


def symptom_monitor(symptom: Symptom) -> dict[str, Any]:
    thresholds: dict[str, float] = {"critical": symptom.critical}
    if symptom.warning is not None:
        thresholds["warning"] = symptom.warning
    return {
        "name": f"STORM {symptom.name}",
        "type": "query alert",
        "query": symptom.query.format(env=f"env:{ENV}"),
        "message": f"{symptom.meaning} Runbook: {RUNBOOK}#monitor-{symptom.key.replace('_', '-')}",
        "monitor_thresholds": thresholds,
        "notify_no_data": False,
        "require_full_window": False,
        "tags": ["service:storm", f"monitor:{symptom.key}", "managed-by:terraform", f"env:{ENV}"],
    }


def dashboard(defs: Definitions) -> dict[str, Any]:
    env = "$env"

    def ts(title: str, *queries: str, kind: str = "line") -> dict[str, Any]:
        return {"definition": {"type": "timeseries", "title": title, "show_legend": True,
                               "requests": [{"q": q, "display_type": kind} for q in queries]}}

    def pcts(metric: str) -> list[str]:
        return [f"p{p}:{metric}{{env:{env}}}" for p in (50, 95, 99)]

    widgets = [
        ts("Open connections by gateway", f"sum:storm.gateway.connections{{env:{env}}} by {{instance}}", kind="area"),
        ts("Connects by result", f"sum:storm.gateway.connects{{env:{env}}} by {{result}}.as_count()", kind="bars"),
        ts("Disconnects by close code", f"sum:storm.gateway.disconnects{{env:{env}}} by {{code}}.as_count()",
           kind="bars"),
        ts("Publishes and deliveries per second",
           f"sum:storm.commands{{env:{env},op:publish,result:ok}}.as_rate()",
           f"sum:storm.fanout.deliveries{{env:{env}}}.as_rate()"),
        ts("Publish ack latency p50 / p95 / p99 (ms)", *pcts("storm.publish.ack_latency")),
        ts("Delivery latency p50 / p95 / p99 (ms)", *pcts("storm.delivery.latency")),
        ts("Reconnects (resumes) per second", f"sum:storm.gateway.resumes{{env:{env}}} by {{recovered}}.as_rate()"),
        ts("Errors by command and code",
           f"sum:storm.commands{{env:{env},!result:ok}} by {{op,result}}.as_count()",
           f"sum:storm.auth.failures{{env:{env}}} by {{reason}}.as_count()",
           f"sum:storm.ratelimit.refused{{env:{env}}} by {{scope}}.as_count()",
           f"sum:storm.outbox.overflows{{env:{env}}}.as_count()", kind="bars"),
        ts("Consumer backlog and dead letters", f"sum:storm.consumer.backlog{{env:{env}}}",
           f"sum:storm.consumer.dead_lettered{{env:{env}}}.as_count()"),
        ts("Dependencies p99 (ms)", f"p99:storm.broker.publish_latency{{env:{env}}}",
           f"p99:storm.cache.op_latency{{env:{env}}} by {{op}}", f"p99:storm.store.tx_latency{{env:{env}}}"),
        ts("Event-loop lag p99 by process (ms)", f"p99:storm.process.loop_lag{{env:{env}}} by {{service,instance}}"),
        ts("RSS by service (bytes)", f"sum:storm.process.rss{{env:{env}}} by {{service}}", kind="area"),
        ts("CPU by service (%)", f"sum:storm.process.cpu{{env:{env}}} by {{service}}"),
    ]
    for slo in defs.slos:
        widgets.append({"definition": {
            "type": "slo", "title": slo.name, "view_type": "detail", "view_mode": "overall",
            "slo_id": f"${{datadog_service_level_objective.{slo.id}.id}}",
            "time_windows": [defs.window, "7d"], "show_error_budget": True,
        }})
    return {
        "title": "STORM",
        "description": "Generated by storm_tools/datadog_tf.py from the metrics catalogue and storm_tools/slos.yaml; "
                       "do not edit in the UI (docs/observability.md).",
        "layout_type": "ordered",
        "template_variables": [{"name": "env", "prefix": "env", "default": "prod"}],
        "widgets": widgets,
    }


def files(defs: Definitions | None = None) -> dict[str, str]:
    """The generated Terraform, file name -> content."""
    defs = defs or load()
    monitors: dict[str, Any] = {}
    for slo in defs.slos:
        for speed, factor, long, short, severity in BURN_RATES:
            monitors[f"{slo.id}_burn_{speed}"] = burn_rate_monitor(slo, defs.window, speed, factor, long, short,
                                                                   severity)
    for symptom in SYMPTOMS:
        monitors[symptom.key] = symptom_monitor(symptom)
    docs = {
        "main.tf.json": {
            "//": "Generated by storm_tools/datadog_tf.py; do not edit (docs/observability.md).",
            "terraform": {"required_providers": {"datadog": {"source": "DataDog/datadog", "version": "~> 3.40"}}},
            "variable": {"env": {"type": "string", "default": "prod",
                                 "description": "The env tag (DD_ENV) every query filters on."}},
        },
        "slos.tf.json": {"resource": {"datadog_service_level_objective": {
            slo.id: slo_resource(slo, defs.window) for slo in defs.slos}}},
        "monitors.tf.json": {"resource": {"datadog_monitor": monitors}},
        "dashboard.tf.json": {"resource": {"datadog_dashboard_json": {"storm": {
            "dashboard": json.dumps(dashboard(defs), indent=2)}}}},
    }
    return {name: json.dumps(doc, indent=2) + "\n" for name, doc in docs.items()}


# -- docs/observability.md ----------------------------------------------------------------------------
def slo_table(defs: Definitions) -> str:
    lines = ["| SLO | SLI | Target | Window |", "|---|---|---|---|"]
    for s in defs.slos:
        if s.kind == "ratio":
            sli = f"good `{count_query(s.good, '…')}` / total `{count_query(s.total, '…')}`"
        else:
            sli = f"p{int(s.percentile)} of `{s.metric}` ≤ {s.threshold_ms:g} ms per {s.slice_s // 60}-min slice"
        lines.append(f"| **{s.name}** (`{s.id}`): {s.description} | {sli} | {s.target:g} % | {defs.window} |")
    return "\n".join(lines) + "\n"


def monitor_runbooks() -> str:
    out = []
    for s in SYMPTOMS:
        out.append(f"### Monitor: {s.name}\n\n<a id=\"monitor-{s.key.replace('_', '-')}\"></a>"
                   f"`{s.query.format(env='env:…')}` (critical {s.critical:g}"
                   f"{f', warning {s.warning:g}' if s.warning is not None else ''})\n\n"
                   f"**Means:** {s.meaning}\n\n**Do:** {s.runbook}\n")
    return "\n".join(out)


SECTIONS = {"catalogue": markdown_table, "slos": lambda: slo_table(load()), "monitors": monitor_runbooks}


def render_doc(text: str) -> str:
    """``text`` with every ``<!-- generated:NAME -->…<!-- /generated:NAME -->`` block regenerated."""
    for name, make in SECTIONS.items():
        start, end = f"<!-- generated:{name} -->", f"<!-- /generated:{name} -->"
        if start not in text or end not in text:
            raise ValueError(f"{DOC.name} lacks the markers {start} … {end}")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{make()}{end}{tail}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a checked-in file differs")
    args = parser.parse_args(argv)
    wanted = {OUT / name: text for name, text in files().items()}
    wanted[DOC] = render_doc(DOC.read_text())
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python -m storm_tools.datadog_tf)", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
