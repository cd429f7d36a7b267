"""Chaos Toolkit actions of STORM's extension (``"provider": {"type": "python", "module":
"storm_tools.chaos.actions", "func": ...}``); chaos-experiments/README.md lists which experiment uses which.

* load: :func:`drive_traffic` (run it with ``"background": true``: it lasts the whole method);
* processes of ``storm cluster``: :func:`kill_role`, :func:`stop_role` (graceful drain), :func:`rolling_restart`
  (the supervisor restarts what exits; these wait until it serves again);
* services: :func:`stop_service`, :func:`start_service` (``scripts/services.sh down|up <service>``);
* links, through Toxiproxy: :func:`add_toxic` (latency, timeout, bandwidth ...), :func:`cut_link` (a silent
  partition),
  :func:`restore_links` (also every experiment's rollback);
* clients: :func:`connect_spike` (a reconnect storm).

Every fault is recorded (name, start, end) in the run folder's faults.jsonl, which the judge reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from typing import Any

from storm_tools.chaos import context as ctx
from storm_tools.chaos.driver import DriverConfig, Workspace, drive
from storm_tools.chaos.toxiproxy import Toxiproxy


def _num(value: Any) -> float:
    """Experiment arguments may come from the configuration (strings from the environment)."""
    return float(value)


def _say(message: str) -> None:
    from logging import getLogger

    getLogger("storm.chaos").info(message)


# --- load ---------------------------------------------------------------------------------------------------


def drive_traffic(duration_s: Any = 60, connections: Any = 200, rate: Any = 1.0, slow_fraction: Any = 0.0,
                  settle_s: Any = 45, body_chars: Any = 0) -> dict[str, Any]:
    """The live load of the method: the run's workspace (made by the steady-state probe), ``connections``
    clients in channels of 10, 2 publishers a channel at ``rate``/s each (texts padded to ``body_chars``), for
    ``duration_s``; the records go to the run folder (traffic.json) for the steady-state probe after the
    method."""
    cfg = DriverConfig(connections=int(_num(connections)), rate=_num(rate), duration_s=_num(duration_s),
                       slow_fraction=_num(slow_fraction), settle_s=_num(settle_s), body_chars=int(_num(body_chars)))
    state = _run_state()
    if "workspace" not in state:
        raise ctx.ChaosContextError("no workspace for this run: the steady-state probe "
                                    "storm_tools.chaos.probes.slo_steady_state must run before the method")
    ws = Workspace.from_dict(state["workspace"])
    gateways = [c.ws_url for c in ctx.children() if c.role == "gateway"]
    records = asyncio.run(drive(ws, gateways, cfg, say=_say, metrics_port=int(ctx.context().get("metrics_port", 0))))
    (ctx.run_dir() / "traffic.json").write_text(json.dumps(records.as_dict()))
    _save_run_state({**state, "phase": "driven"})
    return {"published": len(records.sent), "deliveries": len(records.deliveries), "reconnects": records.reconnects}


def _run_state() -> dict[str, Any]:
    path = ctx.run_dir() / "state.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _save_run_state(state: dict[str, Any]) -> None:
    (ctx.run_dir() / "state.json").write_text(json.dumps(state))


# --- processes ----------------------------------------------------------------------------------------------


def _signal_child(name: str, sig: signal.Signals) -> ctx.ChildState:
    target = ctx.child(name)
    if target.pid == 0:
        raise ctx.ChaosContextError(f"{name} is not running (the supervisor is restarting it)")
    ctx.record_fault(f"{sig.name} {name}")
    os.kill(target.pid, sig)
    return target


def _wait_restarted(before: ctx.ChildState, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = ctx.child(before.name)
        if now.restarts > before.restarts and now.pid and ctx.healthy(now):
            return time.monotonic() - (deadline - timeout_s)
        time.sleep(0.2)
    raise ctx.ChaosContextError(f"{before.name} was not restarted and serving within {timeout_s:.0f} s")


def kill_role(name: str = "gateway-1", timeout_s: Any = 60) -> dict[str, Any]:
    """SIGKILL one process of ``storm cluster`` (by its PID in the state file); wait until the supervisor has
    restarted it and it answers /healthz."""
    before = _signal_child(name, signal.SIGKILL)
    took = _wait_restarted(before, _num(timeout_s))
    return {"killed_pid": before.pid, "serving_again_after_s": round(took, 2)}


def stop_role(name: str = "gateway-1", timeout_s: Any = 60) -> dict[str, Any]:
    """SIGTERM (a graceful drain: close 1012, clients reconnect with jitter) one process; wait until the
    supervisor has restarted it and it serves."""
    before = _signal_child(name, signal.SIGTERM)
    took = _wait_restarted(before, _num(timeout_s))
    return {"stopped_pid": before.pid, "serving_again_after_s": round(took, 2)}


def rolling_restart(role: str = "gateway", pause_s: Any = 5, timeout_s: Any = 60) -> list[dict[str, Any]]:
    """Drain and restart every process of ``role`` in turn, the next once the previous serves again."""
    out = []
    for c in [c for c in ctx.children() if c.role == role]:
        out.append({"name": c.name, **stop_role(c.name, timeout_s)})
        time.sleep(_num(pause_s))
    return out


# --- services -----------------------------------------------------------------------------------------------


def _services(action: str, service: str) -> None:
    if service not in ctx.SERVICES:
        raise ctx.ChaosContextError(f"unknown service {service!r}; expected one of {', '.join(ctx.SERVICES)}")
    script = ctx.context().get("services_script") or str(ctx.ROOT / "scripts" / "services.sh")
    result = subprocess.run(["bash", script, action, service], capture_output=True, text=True,  # noqa: S603,S607
                            check=False, timeout=300)
    if result.returncode != 0:
        raise ctx.ChaosContextError(f"services.sh {action} {service} failed: {result.stderr.strip()[-400:]}")


def stop_service(service: str) -> dict[str, Any]:
    """Stop PostgreSQL, Pulsar or the Hazelcast member (``scripts/services.sh down <service>``)."""
    ctx.record_fault(f"{service} down")
    began = time.monotonic()
    _services("down", service)
    return {"service": service, "stopped_in_s": round(time.monotonic() - began, 1)}


def start_service(service: str) -> dict[str, Any]:
    """Start it again and wait until it is healthy; marks the fault as ended."""
    began = time.monotonic()
    _services("up", service)
    ctx.end_faults()
    return {"service": service, "healthy_in_s": round(time.monotonic() - began, 1)}


# --- links (Toxiproxy) --------------------------------------------------------------------------------------


def _links(service: str, children: str | list[str]) -> list[str]:
    if service not in ctx.SERVICES:
        raise ctx.ChaosContextError(f"unknown service {service!r}; expected one of {', '.join(ctx.SERVICES)}")
    links: dict[str, dict[str, str]] = ctx.context()["links"]
    names = list(links) if children in ("*", ["*"]) else ([children] if isinstance(children, str) else children)
    unknown = [n for n in names if n not in links]
    if unknown:
        raise ctx.ChaosContextError(f"no links for {', '.join(unknown)}; known: {', '.join(links)}")
    direct = [n for n in names if service not in links[n]]
    if direct:
        raise ctx.ChaosContextError(f"the link of {', '.join(direct)} to {service} bypasses Toxiproxy "
                                    "(storm chaos run --direct): it cannot be faulted")
    return [links[n][service] for n in names]


def add_toxic(service: str, kind: str = "latency", attributes: dict[str, Any] | None = None,
              children: str | list[str] = "*", stream: str = "downstream") -> dict[str, Any]:
    """Add a toxic (latency {latency, jitter} ms, timeout {timeout} ms, bandwidth {rate} KB/s ...) on the links
    from ``children`` (a child name, a list, or ``*``) to ``service``."""
    proxy = Toxiproxy(ctx.context()["toxiproxy_url"])
    attrs = {k: int(_num(v)) if _num(v).is_integer() else _num(v) for k, v in (attributes or {}).items()}
    proxies = _links(service, children)
    for name in proxies:
        proxy.add_toxic(name, f"chaos-{kind}-{stream}", kind, attrs, stream=stream)
    ctx.record_fault(f"{kind} {attrs} on {service} ({children})")
    return {"proxies": proxies, "toxic": kind, "attributes": attrs}


def cut_link(service: str, children: str | list[str] = "*") -> dict[str, Any]:
    """A partition: nothing passes any more on the links from ``children`` to ``service``, in either direction,
    and the connections stay open (a ``timeout`` toxic of 0 ms on both streams: packets dropped, no reset).
    Disabling the proxy instead would reset the connections, and the Hazelcast client reconnects at once to
    the member address it learned (127.0.0.1:5701), around the proxy: no partition at all."""
    proxy = Toxiproxy(ctx.context()["toxiproxy_url"])
    proxies = _links(service, children)
    for name in proxies:
        for stream in ("upstream", "downstream"):
            proxy.add_toxic(name, f"chaos-cut-{stream}", "timeout", {"timeout": 0}, stream=stream)
    ctx.record_fault(f"cut {service} ({children})")
    return {"proxies": proxies, "cut": "timeout toxic, 0 ms, both streams"}


def restore_links() -> dict[str, Any]:
    """Every link of the run enabled and without toxics (the rollback of every network experiment)."""
    proxy = Toxiproxy(ctx.context()["toxiproxy_url"])
    ours = {name for links in ctx.context()["links"].values() for name in links.values()}
    restored = []
    for name, info in proxy.proxies().items():
        if name not in ours:
            continue
        for toxic in info.get("toxics") or []:
            proxy.remove_toxic(name, toxic["name"])
        if not info.get("enabled", True):
            proxy.set_enabled(name, True)
        restored.append(name)
    ctx.end_faults()
    return {"restored": sorted(restored)}


# --- clients ------------------------------------------------------------------------------------------------


def connect_spike(factor: Any = 10, connections: Any = 200, within_s: Any = 10) -> dict[str, Any]:
    """A reconnect storm: ``factor`` x ``connections`` extra clients of the run's workspace connect (auth,
    subscribe) to the gateways within ``within_s``, then leave.  Reports how many made it and how long."""
    from storm_tools.chaos.spike import spike

    state = _run_state()
    ws = Workspace.from_dict(state["workspace"])
    gateways = [c.ws_url for c in ctx.children() if c.role == "gateway"]
    ctx.record_fault(f"connect spike x{factor}")
    result = asyncio.run(spike(ws, gateways, int(_num(factor) * _num(connections)), _num(within_s)))
    ctx.end_faults()
    return result


def reset_run() -> dict[str, Any]:
    """Forget the run folder's previous state (faults, records): the first step of a rerun."""
    for name in ("faults.jsonl", "traffic.json", "state.json", "verdict.json"):
        (ctx.run_dir() / name).unlink(missing_ok=True)
    return {"run_dir": str(ctx.run_dir())}
