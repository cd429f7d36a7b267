"""Chaos Toolkit probes of STORM's extension: the steady-state hypothesis of every experiment.

:func:`slo_steady_state` is the hypothesis probe, run twice by Chaos Toolkit:

* **before** the method it provisions the run's workspace (through the tenants API), drives a short baseline
  load and judges it: the SLOs hold and nothing is lost, duplicated or reordered;
* **after** the method (once :func:`storm_tools.chaos.actions.drive_traffic` has written its records) it judges
  the whole method's load: the SLO verdicts (storm_tools/chaos/slo_seam.py), and, from the records and the
  database, 0 acked messages lost, 0 duplicates, 0 inversions, every acked message stored exactly once.

It returns the figures (they land in the journal) and writes them to the run folder
(verdict-before.json, verdict-after.json); :func:`verdict_ok` is the tolerance probe that reads ``ok``.
``gate`` names the SLOs a fault must not break (default all); an experiment whose fault degrades one by design
reports it instead, and its file says so, with the bound.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from storm_tools.chaos import context as ctx
from storm_tools.chaos.driver import DriverConfig, Workspace, drive, provision, stored_messages
from storm_tools.chaos.judge import Fault, integrity_ok, score
from storm_tools.chaos.slo_seam import evaluate

SLOW_CLOSE = 4008  # the close code of a client that does not read (docs/protocol.md)


def cluster_serves(timeout_s: float = 30.0) -> bool:
    """Every process of the cluster answers /healthz (within ``timeout_s``)."""
    try:
        ctx.wait_serving(timeout_s=float(timeout_s))
    except ctx.ChaosContextError:
        return False
    return True


def _faults() -> list[Fault]:
    path = ctx.run_dir() / "faults.jsonl"
    if not path.exists():
        return []
    return [Fault(f["name"], f["at"], f.get("until")) for f in map(json.loads, path.read_text().splitlines()) if f]


def slo_steady_state(connections: Any = 200, slow_fraction: Any = 0.0, baseline_s: Any = 5.0,
                     database_wait_s: Any = 90.0, gate: Any = "all", slow_must_close: Any = False) -> dict[str, Any]:
    """The steady state (module docstring): before the method a baseline, after it the method's verdict.

    ``gate``: the SLO ids (storm_tools/slos.yaml) whose miss fails the experiment, or ``"all"``; the others are
    reported only (the experiment file says why: a degradation by design, with its bound).  ``slow_must_close``:
    every slow reader must have been closed with 4008 (the load of the experiment overflows their outbox).  An SLO the
    baseline already missed (this machine cannot meet it even without a fault) gates nothing either: it is
    reported as ``missed in the baseline``.  Integrity (lost, duplicates, inversions, stored once) always gates."""
    gated = None if gate == "all" else {str(g) for g in gate}
    state_path = ctx.run_dir() / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("phase") == "driven":
        ws = Workspace.from_dict(state["workspace"])
        verdict = _judge_method(ws, float(database_wait_s), gated, set(state.get("baseline_missed", [])),
                                _flag(slow_must_close))
        state["phase"] = "judged"
        if verdict["integrity_ok"]:  # else its broker topics are kept for whoever investigates
            _delete_workspace(ws)
    elif state.get("phase") == "baseline":
        # after the method, but the traffic driver never finished (it failed: see the journal's run): the
        # method was not judged, so the steady state is not met (it used to judge a fresh baseline instead)
        verdict = {"phase": "after", "ok": False, "workspace": state["workspace"]["slug"], "integrity_ok": False,
                   "error": "the traffic driver did not finish: no records of the method to judge",
                   "slos": [], "figures": {}}
        state["phase"] = "judged"
    else:
        for name in ("faults.jsonl", "traffic.json", "verdict-after.json"):
            (ctx.run_dir() / name).unlink(missing_ok=True)
        verdict, state = _baseline(int(float(connections)), float(slow_fraction), float(baseline_s))
    state_path.write_text(json.dumps(state))
    (ctx.run_dir() / f"verdict-{verdict['phase']}.json").write_text(json.dumps(verdict, indent=2))
    return verdict


def _baseline(connections: int, slow_fraction: float, baseline_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Provision the run's workspace and judge a short load: nothing lost, duplicated or reordered.  The SLOs
    the baseline misses are recorded: those cannot gate the method."""
    c = ctx.context()
    api = next(ch for ch in ctx.children() if ch.role == "api")
    cfg = DriverConfig(connections=connections, slow_fraction=slow_fraction)
    slow_users = round(cfg.channel_size * slow_fraction) * cfg.channels
    ws = asyncio.run(provision(api.http_url, c["secret"], cfg, slow_users, c.get("workspace_prefix", "chaos-")))
    gateways = [ch.ws_url for ch in ctx.children() if ch.role == "gateway"]
    base = DriverConfig(connections=min(connections, 20), duration_s=baseline_s, settle_s=15, tag="b")
    records = asyncio.run(drive(ws, gateways, base, metrics_port=int(c.get("metrics_port", 0))))
    result = score(records.as_dict())
    verdicts = [v.as_dict() for v in evaluate(result, records.metrics)]
    clean = not (result["lost"] or result["duplicates"] or result["inversions"] or result["unacked"])
    missed = [v["slo"] for v in verdicts if v["ok"] is False]
    verdict = {"phase": "before", "ok": clean, "workspace": ws.slug, "integrity_ok": clean,
               "baseline_missed": missed, "slos": verdicts, "figures": result}
    return verdict, {"phase": "baseline", "workspace": ws.as_dict(), "baseline_missed": missed}


def _flag(value: Any) -> bool:
    """A boolean argument of an experiment file (JSON true, or a string from a configuration variable)."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def slow_readers_ok(closes: dict[str, int | str | None], must_close: bool, closed_4008: int | None = None) -> bool:
    """Every slow reader was closed with 4008 by the gateway, or (unless ``must_close``) is still open.

    ``closes`` maps each slow reader to how its socket ended (driver ``_SlowReader.ended``): 4008 when the close
    frame got through, ``"reset"`` when the gateway cut the socket before the reader read its frame (a reader
    that stopped reading never gets it: it sits behind what the reader did not read), ``"open"`` (or None, from
    older records).  A reset counts as a 4008 close only when the gateways' own count of 4008 closes
    (``closed_4008``) equals the number of slow readers that ended: then every cut was a 4008, and no reading
    client was closed with 4008 either (nobody else was treated as slow)."""
    ended = [code for code in closes.values() if code not in ("open", None)]
    if any(code not in (SLOW_CLOSE, "reset") for code in ended):
        return False  # any other close code fails
    if must_close and len(ended) != len(closes):
        return False  # one never overflowed
    if "reset" in ended and closed_4008 != len(ended):
        return False  # a cut the gateways do not account for as 4008
    return True


def _judge_method(ws: Workspace, database_wait_s: float, gated: set[str] | None,
                  baseline_missed: set[str], slow_must_close: bool = False) -> dict[str, Any]:
    records = json.loads((ctx.run_dir() / "traffic.json").read_text())
    acked = {s["cmid"] for s in records["sent"] if s.get("message_id")}
    database_url = ctx.context()["database_url"]
    deadline = time.monotonic() + database_wait_s
    stored = asyncio.run(stored_messages(database_url, ws.slug))
    while not acked <= set(stored) and time.monotonic() < deadline:  # the consumers persist asynchronously
        time.sleep(2.0)
        stored = asyncio.run(stored_messages(database_url, ws.slug))
    result = score(records, stored, _faults())
    verdicts = []
    for v in evaluate(result, records.get("metrics", [])):
        row = v.as_dict()
        if gated is not None and v.slo not in gated:
            row["judged"] = "reported only (a degradation by design: see the experiment's description)"
        elif v.slo in baseline_missed and v.slo != "acked_delivered":
            row["judged"] = "reported only (missed in the baseline, before any fault)"
        else:
            row["judged"] = "gates"
        verdicts.append(row)
    # slow readers: closed by the gateway with 4008 once their outbox overflowed, or (unless slow_must_close)
    # still open when it never did (the load was below what the socket buffers absorb); any other close is a
    # failure (docs/delivery.md, "Slow consumers")
    clean = integrity_ok(result) and slow_readers_ok(result["slow_closed"], slow_must_close,
                                                     result["closed_4008_by_gateways"])
    ok = clean and all(v["ok"] is not False for v in verdicts if v["judged"] == "gates")
    return {"phase": "after", "ok": ok, "workspace": ws.slug, "integrity_ok": clean, "gate": sorted(gated or [])
            or "all", "slos": verdicts, "figures": result}


def delete_leftover(run_dir: Any) -> None:
    """The workspace of a run that did not reach its verdict (interrupted, failed before the end)."""
    path = run_dir / "state.json"
    if path.exists():
        state = json.loads(path.read_text())
        if state.get("workspace") and state.get("phase") != "judged":
            _delete_workspace(Workspace.from_dict(state["workspace"]))


def _delete_workspace(ws: Workspace) -> None:
    """Best effort: the run's workspace (its Pulsar tenant, rows, cache entries) through the tenants API."""
    import contextlib

    import httpx

    api = next((ch for ch in ctx.children() if ch.role == "api"), None)
    if api is None:
        return
    with contextlib.suppress(httpx.HTTPError):
        httpx.delete(f"{api.http_url}/v1/workspaces/{ws.slug}", timeout=30,
                     headers={"Authorization": f"Bearer {ws.token(ws.users[0])}"})


def verdict_ok(value: dict[str, Any] | None = None) -> bool:
    """Tolerance of :func:`slo_steady_state`: its ``ok``."""
    return bool(value and value.get("ok"))
