"""The verdict of one chaos experiment, from the traffic driver's records (no I/O; chaos-experiments/README.md).

:func:`score` reads what the driver recorded (every publish: sent, acked or failed, with its cmid; every
delivery: to whom, at which offset, when) plus what the database holds for the run's workspace, and counts:

* ``lost``: (member, acked message) pairs never delivered to a member of the channel that stayed connected
  (slow readers that the gateway closed with 4008 are judged apart: ``slow_closed``, how each one's socket
  ended, and ``closed_4008_by_gateways``, the gateways' own count of 4008 closes);
* ``duplicates``: a message id delivered twice to one member, plus an acked cmid stored under two ids;
* ``inversions``: a delivery whose offset is not above the member's previous one in that channel, or whose
  sender's sequence number (in the cmid) is below that sender's previous one;
* ``not_stored`` / ``stored_twice``: acked messages missing from the database, or stored more than once;
* latencies: publish -> ack and publish -> delivery percentiles, and the ack latency of the publishes in
  flight when the fault began (``ack_p99_ms_at_fault``: the resent ones);
* ``time_to_recover_s``: from the first fault to the send time of the last publish that failed, was never
  acked, or was acked more than :data:`RECOVER_ACK_S` after it was sent (an outage, not the machine's noise);
  0 when none did.

The SLO verdicts come from the shared definitions, over the cluster's metrics (:mod:`storm_tools.chaos.slo_seam`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

RECOVER_ACK_S = 1.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cmid_seq(cmid: str) -> tuple[str, int] | None:
    """``u007-000042`` -> ("u007", 42); None for a cmid the driver did not make."""
    sender, _, seq = cmid.rpartition("-")
    return (sender, int(seq)) if sender and seq.isdigit() else None


@dataclass(frozen=True)
class Fault:
    name: str
    at: float  # wall-clock seconds (time.time()), as the actions record it
    until: float | None = None


def score(records: dict[str, Any], stored: dict[str, list[str]] | None = None,
          faults: list[Fault] | None = None) -> dict[str, Any]:
    """The figures of one run (module docstring).  ``records`` is what :mod:`storm_tools.chaos.driver` writes;
    ``stored`` maps each cmid of the run's workspace to the message ids the database holds for it (None: the
    database was not read)."""
    sent: list[dict[str, Any]] = records["sent"]
    deliveries: list[dict[str, Any]] = records["deliveries"]
    members: dict[str, str] = records["members"]  # receiver -> channel
    slow: set[str] = set(records.get("slow_readers", {}))
    faults = sorted(faults or [], key=lambda f: f.at)
    acked = [s for s in sent if s.get("message_id")]
    acked_ids_by_channel: dict[str, set[str]] = defaultdict(set)
    sent_at_by_id: dict[str, float] = {}
    for s in acked:
        acked_ids_by_channel[s["channel"]].add(s["message_id"])
        sent_at_by_id[s["message_id"]] = s["sent_at"]

    seen: dict[str, set[str]] = defaultdict(set)
    last_offset: dict[str, int] = {}
    last_seq: dict[tuple[str, str], int] = {}
    duplicates = inversions = 0
    inverted: list[str] = []
    delivery_ms: list[float] = []
    for d in sorted(deliveries, key=lambda d: d["at"]):
        receiver = d["receiver"]
        if d["message_id"] in seen[receiver]:
            duplicates += 1
            continue
        seen[receiver].add(d["message_id"])
        if d["offset"] <= last_offset.get(receiver, -1):
            inversions += 1
        last_offset[receiver] = max(d["offset"], last_offset.get(receiver, -1))
        parsed = cmid_seq(d.get("cmid") or "")
        if parsed is not None:
            key = (receiver, parsed[0])
            if parsed[1] < last_seq.get(key, -1):
                inversions += 1
                inverted.append(d.get("cmid") or "")
            last_seq[key] = max(parsed[1], last_seq.get(key, -1))
        if d["message_id"] in sent_at_by_id:
            delivery_ms.append(max(0.0, (d["at"] - sent_at_by_id[d["message_id"]]) * 1000))
    lost = 0
    lost_ids: set[str] = set()
    for receiver, channel in members.items():
        if receiver not in slow:
            missed = acked_ids_by_channel[channel] - seen[receiver]
            lost += len(missed)
            lost_ids |= missed

    ids_by_cmid = {s["cmid"]: s["message_id"] for s in acked}
    not_stored = stored_twice = wrong_id = 0
    missing: list[str] = []
    if stored is not None:
        for cmid, message_id in ids_by_cmid.items():
            ids = stored.get(cmid, [])
            not_stored += not ids
            if not ids:
                missing.append(cmid)
            stored_twice += max(0, len(ids) - 1)
            wrong_id += bool(ids) and message_id not in ids
    ack_ms = [(s["acked_at"] - s["sent_at"]) * 1000 for s in acked]
    first_fault = faults[0].at if faults else None
    at_fault = [(s["acked_at"] - s["sent_at"]) * 1000 for s in acked
                if first_fault is not None and s["sent_at"] <= first_fault <= s["acked_at"]]
    result: dict[str, Any] = {
        "published": len(sent), "acked": len(acked), "failed": sum(1 for s in sent if s.get("error")),
        "unacked": sum(1 for s in sent if not s.get("message_id") and not s.get("error")),
        "deliveries": sum(len(ids) for ids in seen.values()), "members": len(members),
        "lost": lost, "lost_messages": len(lost_ids), "duplicates": duplicates + stored_twice, "inversions": inversions,
        "not_stored": not_stored, "stored_twice": stored_twice, "stored_under_other_id": wrong_id,
        "database_checked": stored is not None,
        "ack_p50_ms": round(percentile(ack_ms, 0.50), 1), "ack_p99_ms": round(percentile(ack_ms, 0.99), 1),
        "ack_max_ms": round(max(ack_ms, default=0.0), 1),
        "deliver_p99_ms": round(percentile(delivery_ms, 0.99), 1),
        "in_flight_at_fault": len(at_fault), "ack_p99_ms_at_fault": round(percentile(at_fault, 0.99), 1),
        "slow_readers": len(slow), "slow_closed": dict(records.get("slow_readers", {})),
        "closed_4008_by_gateways": server_closes(records.get("metrics", []), 4008),
        "reconnects": int(records.get("reconnects", 0)),
        "closed_for_good": dict(records.get("closed_for_good", {})),
        "time_to_recover_s": time_to_recover(sent, first_fault),
        "faults": [{"name": f.name, "at": f.at, "until": f.until} for f in faults],
        "examples": {"not_stored": sorted(missing)[:10], "inverted": sorted(set(inverted))[:10]},
    }
    return result


def server_closes(metrics: list[dict[str, Any]], code: int) -> int:
    """How many connections the gateways closed with ``code`` meanwhile: their ``storm.gateway.disconnects``
    counts (docs/observability.md).  A reader that stopped reading never sees the close frame (it sits behind
    what it did not read, and the gateway cuts the socket ``CLOSE_WAIT_S`` later), so this is how the
    experiment knows *why* its slow readers' sockets were cut."""
    tag = f"code:{code}"
    return int(sum(p["value"] for p in metrics if p["name"] == "storm.gateway.disconnects" and tag in p["tags"]))


def time_to_recover(sent: list[dict[str, Any]], fault_at: float | None) -> float | None:
    """Seconds from the fault to the send time of the last publish that went badly (failed, never acked, or
    acked more than RECOVER_ACK_S after it was sent); 0 when none did; None without a fault."""
    if fault_at is None:
        return None
    target_s = RECOVER_ACK_S
    bad = [s["sent_at"] for s in sent if s["sent_at"] >= fault_at - target_s
           and (s.get("error") or not s.get("message_id") or s["acked_at"] - s["sent_at"] > target_s)]
    return round(max(0.0, max(bad) - fault_at), 2) if bad else 0.0


def integrity_ok(result: dict[str, Any]) -> bool:
    """What every experiment asserts: nothing acked lost, duplicated, reordered, missing or doubled in the
    database, and every publish acked or refused by the end (none left hanging)."""
    return not (result["lost"] or result["duplicates"] or result["inversions"] or result["not_stored"]
                or result["stored_under_other_id"] or result["unacked"]) and result["database_checked"]

