"""`storm cost`: the AWS fleet and bill for the launch-day targets, sized from measured capacities.

    storm cost [--from REPORT] [--prices FILE] [--json] [--tfvars PATH] [--hours 24] [--peak-hours 2]

Inputs (formats in terraform/README.md, "Sizing"):

* capacities: ``storm_tools/capacities/measured.json`` by default (each figure with its source and whether it
  was measured on this machine), or ``--from`` a file of the same shape, or a ``storm day`` report.json that
  holds one under the key ``capacities``, or a ``storm day`` run folder (its report.json's, else derived from
  its files by :mod:`storm_tools.day.capacity`): the run's figures where it measured them, the defaults'
  elsewhere, and the bill says which came from where (issue 15, docs/storm-day.md "The bill");
* prices: ``storm_tools/prices/aws-eu-west-1.json`` (AWS on-demand, eu-west-1, each line with its source and
  date; written from knowledge, not read from the live price list: see its ``caveat``).

The model is pure (``size_fleet``, ``bill``): CPU per role = rate x measured µs per unit, divided by the
target utilisation; instances = ceil(vCPUs needed / usable vCPUs per instance), plus one (N+1), rounded up
to a multiple of the zone count so every zone holds the same share; roles with a quorum have a floor
(Pulsar bookies: two per zone so an ensemble of 3 can still form after a zone loss). Transfer is priced for
``--peak-hours`` of peak traffic; the fleet for all ``--hours``. ``--tfvars`` writes the ``stormday``
environment's ``fleet.auto.tfvars.json`` (tests/unit/test_cost.py checks the checked-in file is what this
writes), so the Terraform and the bill describe the same fleet.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_CAPACITIES = HERE / "capacities" / "measured.json"
DEFAULT_PRICES = HERE / "prices" / "aws-eu-west-1.json"
CAPACITIES_FORMAT = "storm-capacities/1"
PRICES_FORMAT = "storm-prices/1"
TFVARS_PATH = "terraform/envs/stormday/fleet.auto.tfvars.json"

REQUIRED_CAPACITIES = (
    "gateway_us_per_delivery", "gateway_us_per_publish", "gateway_bytes_per_connection", "pulsar_us_per_publish",
    "pulsar_broker_share", "consumer_us_per_message", "db_us_per_write", "db_replication_factor",
    "hazelcast_us_per_publish", "message_event_bytes", "internal_record_bytes",
)


class CostError(ValueError):
    """Bad input: a missing file, a wrong format, a missing or non-positive figure."""


@dataclass(frozen=True)
class Targets:
    connections: int = 100_000
    deliveries_per_s: float = 500_000.0
    fanout: float = 10.0          # deliveries per published message (the e2e bench's channel of 10 members)
    zones: int = 3
    utilisation: float = 0.6      # busiest core at the peak; latency is queueing above this (benchmarks.md)
    hours: float = 24.0           # the event
    peak_hours: float = 2.0       # hours of peak-equivalent traffic within it (transfer is priced on these)
    budget_eur: float = 700.0

    @property
    def publishes_per_s(self) -> float:
        return self.deliveries_per_s / self.fanout

    def check(self) -> None:
        for name in ("connections", "deliveries_per_s", "fanout", "zones", "hours", "budget_eur"):
            if getattr(self, name) <= 0:
                raise CostError(f"{name} must be positive")
        if not 0 < self.utilisation <= 1:
            raise CostError("utilisation must be in (0, 1]")
        if not 0 <= self.peak_hours <= self.hours:
            raise CostError("peak hours must be between 0 and the event's hours")


@dataclass(frozen=True)
class RolePlan:
    """How a role is sized: which instance, how many vCPUs of it do the work, its floor."""

    role: str
    instance_type: str
    usable_vcpus: int | None = None  # None: all of the instance's vCPUs (multi-threaded or one process each)
    minimum: int = 3
    data_gb: int = 0                 # gp3 data volume per instance


# A gateway is one asyncio process (one core) with no SO_REUSEPORT: one per instance, the second vCPU
# left to the kernel's network stack and the Datadog agent.
PLANS = (
    RolePlan("gateway", "c7i.large", usable_vcpus=1, minimum=3),
    RolePlan("api", "c7i.large", minimum=3),
    RolePlan("consumers", "c7i.large", minimum=3),
    RolePlan("pulsar_broker", "m7i.xlarge", minimum=3),
    RolePlan("pulsar_bookie", "m7i.xlarge", minimum=6, data_gb=500),
    RolePlan("pulsar_zookeeper", "m7i.large", minimum=3, data_gb=20),
    RolePlan("hazelcast", "m7i.xlarge", minimum=3),
    RolePlan("cockroachdb", "m7i.2xlarge", minimum=3, data_gb=500),
)


@dataclass
class RoleSize:
    role: str
    instance_type: str
    count: int
    per_zone: int
    vcpus_needed: float
    peak_utilisation: float        # busiest-core share at the peak with every instance up
    zone_loss_utilisation: float   # the same with one zone's instances gone
    usd_per_hour: float
    basis: str


@dataclass
class Bill:
    targets: dict[str, Any]
    fleet: list[RoleSize]
    hourly_usd: dict[str, float]
    transfer_usd_per_peak_hour: dict[str, float]
    fleet_usd_per_hour: float
    transfer_usd_per_peak_hour_total: float
    event_usd: float
    event_eur: float
    event_eur_if_peak_all_event: float
    eur_per_hour_at_peak: float
    budget_eur: float
    within_budget: bool
    survives_zone_loss: bool
    capacities_source: str
    assumptions: list[str] = field(default_factory=list)
    capacities_from_run: list[str] = field(default_factory=list)  # figures a storm day run measured
    run_figures: dict[str, Any] = field(default_factory=dict)  # the run's headline capacities (report.json)


def _figure(doc: dict[str, Any], key: str) -> float:
    entry = doc.get(key)
    if not isinstance(entry, dict) or "value" not in entry:
        raise CostError(f"capacity {key!r} is missing (each capacity is {{'value': ..., 'source': ...}})")
    value = entry["value"]
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise CostError(f"capacity {key!r} must be a positive number, not {value!r}")
    return float(value)


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CostError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise CostError(f"{path}: not JSON ({exc})") from None


def capacity_document(path: Path = DEFAULT_CAPACITIES) -> dict[str, Any]:
    """The ``storm-capacities/1`` document of a capacities file, a `storm day` report.json holding one under
    ``capacities``, or a `storm day` run folder (its report.json's, else derived from the folder's files)."""
    if path.is_dir():
        report = path / "report.json"
        if report.exists():
            return capacity_document(report)
        from storm_tools.day.capacity import derive
        from storm_tools.day.rundata import RunFolderError, load

        try:
            return derive(load(path), load_json(DEFAULT_CAPACITIES))
        except RunFolderError as exc:
            raise CostError(f"{path}: not a storm day run folder: {exc}") from None
    doc = load_json(path)
    if isinstance(doc, dict) and doc.get("format") != CAPACITIES_FORMAT and isinstance(doc.get("capacities"), dict):
        doc = doc["capacities"]  # a storm day report.json: {..., "capacities": {"format": ..., "capacities": {...}}}
    if not isinstance(doc, dict) or doc.get("format") != CAPACITIES_FORMAT:
        raise CostError(f"{path}: not a {CAPACITIES_FORMAT} document (nor a report with 'capacities')")
    return doc


def load_capacities(path: Path = DEFAULT_CAPACITIES) -> tuple[dict[str, float], list[str]]:
    """The figures of :func:`capacity_document` and the assumed (not measured) ones with their sources."""
    return _figures(capacity_document(path), path)


def _figures(doc: dict[str, Any], path: Path) -> tuple[dict[str, float], list[str]]:
    figures = doc.get("capacities")
    if not isinstance(figures, dict):
        raise CostError(f"{path}: 'capacities' must be an object")
    values = {key: _figure(figures, key) for key in REQUIRED_CAPACITIES}
    assumed = [f"{key}: {figures[key].get('source', '')}" for key in REQUIRED_CAPACITIES
               if not figures[key].get("measured", False)]
    return values, assumed


def load_prices(path: Path = DEFAULT_PRICES) -> dict[str, Any]:
    doc = load_json(path)
    if not isinstance(doc, dict) or doc.get("format") != PRICES_FORMAT:
        raise CostError(f"{path}: not a {PRICES_FORMAT} document")
    for plan in PLANS:
        if plan.instance_type not in doc.get("instances", {}):
            raise CostError(f"{path}: no price for {plan.instance_type} ({plan.role})")
    return doc


def _price(prices: dict[str, Any], key: str) -> float:
    try:
        return float(prices[key]["value"])
    except (KeyError, TypeError, ValueError):
        raise CostError(f"prices: {key!r} is missing") from None


def vcpus_needed(cap: dict[str, float], t: Targets) -> dict[str, float]:
    """vCPUs each role burns at the peak (before headroom); the API is control plane: its floor sizes it."""
    pub = t.publishes_per_s
    broker = cap["pulsar_us_per_publish"] * cap["pulsar_broker_share"]
    bookie = cap["pulsar_us_per_publish"] * (1 - cap["pulsar_broker_share"]) * 3  # write quorum 3
    return {
        "gateway": (pub * cap["gateway_us_per_publish"] + t.deliveries_per_s * cap["gateway_us_per_delivery"]) / 1e6,
        "api": 0.0,
        "consumers": pub * cap["consumer_us_per_message"] / 1e6,
        "pulsar_broker": pub * broker / 1e6,
        "pulsar_bookie": pub * bookie / 1e6,
        "pulsar_zookeeper": 0.0,
        "hazelcast": pub * cap["hazelcast_us_per_publish"] / 1e6,
        "cockroachdb": pub * cap["db_us_per_write"] * cap["db_replication_factor"] / 1e6,
    }


def size_fleet(cap: dict[str, float], t: Targets, prices: dict[str, Any]) -> list[RoleSize]:
    t.check()
    need = vcpus_needed(cap, t)
    fleet = []
    for plan in PLANS:
        spec = prices["instances"][plan.instance_type]
        usable = plan.usable_vcpus or int(spec["vcpu"])
        busy = need[plan.role]
        n = math.ceil(busy / t.utilisation / usable) + 1  # N+1
        n = max(plan.minimum, t.zones * math.ceil(n / t.zones))
        per_zone = n // t.zones
        if plan.role == "gateway":  # memory check: connections fit in half an instance's RAM
            per_instance = t.connections / n * cap["gateway_bytes_per_connection"]
            if per_instance > spec["memory_gib"] * 2**30 / 2:
                raise CostError("gateway connections do not fit in half the instance memory")
        basis = (f"{busy:.1f} vCPU busy at the peak / {t.utilisation:.0%} target / {usable} usable vCPU per "
                 f"instance, +1, to a multiple of {t.zones} (floor {plan.minimum})")
        fleet.append(RoleSize(
            role=plan.role, instance_type=plan.instance_type, count=n, per_zone=per_zone,
            vcpus_needed=round(busy, 2), peak_utilisation=round(busy / (n * usable), 3),
            zone_loss_utilisation=round(busy / ((n - per_zone) * usable), 3),
            usd_per_hour=round(n * float(spec["usd_per_hour"]), 4), basis=basis))
    return fleet


def transfer_per_peak_hour(cap: dict[str, float], t: Targets, fleet: list[RoleSize],
                           prices: dict[str, Any]) -> tuple[dict[str, float], float]:
    """USD per hour of peak traffic: internet egress, inter-AZ traffic, NLB capacity units, NAT."""
    pub, rec = t.publishes_per_s, cap["internal_record_bytes"]
    cross = (t.zones - 1) / t.zones  # share of a random peer in another zone
    gateways = next(r.count for r in fleet if r.role == "gateway")
    egress_gb = t.deliveries_per_s * cap["message_event_bytes"] * 3600 / 1e9
    inter_az_bytes_s = pub * rec * (
        cross                                   # gateway -> broker (publish)
        + 2                                     # broker -> 3 bookies, 2 of them in other zones
        + min(t.fanout, gateways) * cross       # broker -> each gateway with a recipient (worst case)
        + cross                                 # broker -> consumers
        + cross + 2 * cap["db_replication_factor"] / 3  # consumers -> leaseholder, Raft to 2 other zones
        + 4 * (cross + 1))                      # 4 Hazelcast operations, each with a backup elsewhere
    inter_az_gb = inter_az_bytes_s * 3600 / 1e9
    nlcu = max(t.connections / 3000, egress_gb * 1.05)  # TLS: 3000 active connections or 1 GB per NLCU-hour
    lines = {
        "internet_egress": egress_gb * _price(prices, "internet_egress_usd_per_gb"),
        "inter_az": inter_az_gb * _price(prices, "inter_az_usd_per_gb"),
        "nlb_capacity_units": nlcu * _price(prices, "nlb_usd_per_nlcu_hour"),
        "nat_processed": 5.0 * _price(prices, "nat_gateway_usd_per_gb"),  # ~5 GB/h: Datadog intake, JWKS, packages
    }
    return {k: round(v, 4) for k, v in lines.items()}, round(egress_gb + inter_az_gb, 1)


def bill(cap: dict[str, float], t: Targets, prices: dict[str, Any], assumed: list[str],
         source: str) -> Bill:
    fleet = size_fleet(cap, t, prices)
    month = _price(prices, "hours_per_month")
    hosts = sum(r.count for r in fleet)
    ebs_gb = sum(r.count * (p.data_gb + 30) for r, p in zip(fleet, PLANS, strict=True))  # + 30 GB root volumes
    hourly = {f"ec2_{r.role}": r.usd_per_hour for r in fleet}
    hourly.update({
        "ebs_gp3": ebs_gb * _price(prices, "ebs_gp3_usd_per_gb_month") / month,
        "load_balancers": 3 * _price(prices, "nlb_usd_per_hour") + _price(prices, "alb_usd_per_hour")
        + 2 * _price(prices, "alb_usd_per_lcu_hour"),  # gateway NLB, internal Pulsar and CockroachDB NLBs, API ALB
        "nat_gateways": t.zones * _price(prices, "nat_gateway_usd_per_hour"),
        "vpc_endpoints": 3 * t.zones * _price(prices, "interface_endpoint_usd_per_az_hour"),  # secretsmanager, ssm, kms
        "datadog_hosts": hosts * _price(prices, "datadog_usd_per_host_month") / month,
        "secrets_and_keys": (6 * _price(prices, "secrets_manager_usd_per_secret_month")  # terraform/modules/secrets
                             + 1 * _price(prices, "kms_usd_per_key_month")) / month,
    })
    hourly = {k: round(v, 4) for k, v in hourly.items()}
    transfer, _gb = transfer_per_peak_hour(cap, t, fleet, prices)
    fleet_h, transfer_h = sum(hourly.values()), sum(transfer.values())
    eur = _price(prices, "usd_to_eur")
    event_usd = fleet_h * t.hours + transfer_h * t.peak_hours
    return Bill(
        targets={**asdict(t), "publishes_per_s": t.publishes_per_s},
        fleet=fleet, hourly_usd=hourly, transfer_usd_per_peak_hour=transfer,
        fleet_usd_per_hour=round(fleet_h, 2), transfer_usd_per_peak_hour_total=round(transfer_h, 2),
        event_usd=round(event_usd, 2), event_eur=round(event_usd * eur, 2),
        event_eur_if_peak_all_event=round((fleet_h + transfer_h) * t.hours * eur, 2),
        eur_per_hour_at_peak=round((fleet_h + transfer_h) * eur, 2),
        budget_eur=t.budget_eur, within_budget=event_usd * eur <= t.budget_eur,
        survives_zone_loss=all(r.zone_loss_utilisation < 1 for r in fleet),
        capacities_source=source, assumptions=assumed,
    )


def tfvars(b: Bill) -> dict[str, Any]:
    """The `stormday` environment's fleet, exactly as Terraform reads it (terraform/envs/stormday)."""
    gateway = next(r for r in b.fleet if r.role == "gateway")
    return {
        "fleet_source": f"generated by `storm cost --tfvars {TFVARS_PATH}` from {b.capacities_source}; do not edit",
        "fleet": {r.role: {"instance_type": r.instance_type, "count": r.count} for r in b.fleet},
        # autoscaling adds gateways before the survivors of a zone loss would each carry more than this
        "gateway_connections_per_instance_target": math.ceil(
            b.targets["connections"] / (gateway.count - gateway.per_zone)),
    }


def render_tfvars(b: Bill) -> str:
    return json.dumps(tfvars(b), indent=2, sort_keys=True) + "\n"


def render_table(b: Bill) -> str:
    lines = [f"STORM launch-day fleet: {b.targets['connections']:,} connections, "
             f"{b.targets['deliveries_per_s']:,.0f} deliveries/s ({b.targets['publishes_per_s']:,.0f} publishes/s "
             f"x {b.targets['fanout']:g}), {b.targets['zones']} zones, N+1",
             "", f"{'role':<18}{'instance':<13}{'count':>6}{'/zone':>6}{'vCPU busy':>11}{'peak':>7}"
             f"{'zone lost':>10}{'USD/h':>9}"]
    for r in b.fleet:
        lines.append(f"{r.role:<18}{r.instance_type:<13}{r.count:>6}{r.per_zone:>6}{r.vcpus_needed:>11.1f}"
                     f"{r.peak_utilisation:>7.0%}{r.zone_loss_utilisation:>10.0%}{r.usd_per_hour:>9.2f}")
    lines += ["", "per hour (USD):"] + [f"  {k:<28}{v:>9.2f}" for k, v in b.hourly_usd.items()]
    lines += [f"  {'fleet':<28}{b.fleet_usd_per_hour:>9.2f}", "per hour of peak traffic (USD):"]
    lines += [f"  {k:<28}{v:>9.2f}" for k, v in b.transfer_usd_per_peak_hour.items()]
    verdict = "within" if b.within_budget else "OVER"
    lines += ["",
              f"EUR per hour at the peak: {b.eur_per_hour_at_peak:.2f}",
              f"event: {b.targets['hours']:g} h of fleet + {b.targets['peak_hours']:g} h of peak traffic = "
              f"{b.event_eur:.2f} EUR ({verdict} the {b.budget_eur:.0f} EUR budget)",
              f"if the peak lasted all {b.targets['hours']:g} h: {b.event_eur_if_peak_all_event:.2f} EUR",
              f"survives the loss of a zone: {'yes' if b.survives_zone_loss else 'NO'}",
              f"capacities: {b.capacities_source}"]
    if b.run_figures:
        run = b.run_figures
        defaults = [k for k in REQUIRED_CAPACITIES if k not in b.capacities_from_run]
        lines += [f"from the run ({run.get('window_s', 0)} s of steady window): "
                  + (", ".join(b.capacities_from_run) or "none"),
                  f"from the defaults ({DEFAULT_CAPACITIES.name}): " + (", ".join(defaults) or "none"),
                  "the run's capacities: " + (", ".join(
                      f"{k.replace('_', ' ')} {v:,.0f}" if v >= 100 else f"{k.replace('_', ' ')} {v:,.1f}"
                      for k, v in run.items()
                      if k.endswith(("_per_gib", "_core")) and isinstance(v, int | float)) or "none")]
        lines += [f"  note: {n}" for n in run.get("notes", [])]
    if b.assumptions:
        lines += ["assumed, not measured:"] + [f"  - {a}" for a in b.assumptions]
    return "\n".join(lines)


def compute(args: argparse.Namespace) -> Bill:
    source = Path(args.source) if args.source else DEFAULT_CAPACITIES
    doc = capacity_document(source)
    cap, assumed = _figures(doc, source)
    prices = load_prices(Path(args.prices) if args.prices else DEFAULT_PRICES)
    targets = Targets(connections=args.connections, deliveries_per_s=args.deliveries, fanout=args.fanout,
                      hours=args.hours, peak_hours=args.peak_hours, budget_eur=args.budget)
    resolved = source.resolve()  # named from the repository root, whatever the working directory
    shown = str(resolved.relative_to(HERE.parent)) if resolved.is_relative_to(HERE.parent) else str(source)
    b = bill(cap, targets, prices, assumed, shown)
    b.capacities_from_run = sorted(k for k in REQUIRED_CAPACITIES if doc["capacities"][k].get("origin") == "run")
    if isinstance(doc.get("run"), dict):
        b.run_figures = {k: v for k, v in doc["run"].items() if k not in ("window_spans", "from_run", "from_defaults")}
    return b


def cmd_cost(args: argparse.Namespace) -> int:
    try:
        b = compute(args)
    except CostError as exc:
        print(f"storm cost: {exc}", file=sys.stderr)
        return 2
    if args.tfvars:
        Path(args.tfvars).write_text(render_tfvars(b))
        print(f"wrote {args.tfvars}", file=sys.stderr)
    print(json.dumps(asdict(b)) if args.json else render_table(b), flush=True)
    return 0


def add_arguments(sub: Any) -> None:
    cost = sub.add_parser("cost", help="the AWS fleet and bill for launch day, from measured capacities")
    cost.add_argument("--from", dest="source", default=None,
                      help="capacities JSON, a storm day report.json or a storm day run folder "
                           f"(default {DEFAULT_CAPACITIES.name})")
    cost.add_argument("--prices", default=None, help="price table (default storm_tools/prices/aws-eu-west-1.json)")
    cost.add_argument("--connections", type=int, default=Targets.connections)
    cost.add_argument("--deliveries", type=float, default=Targets.deliveries_per_s, help="delivered messages/s")
    cost.add_argument("--fanout", type=float, default=Targets.fanout, help="deliveries per published message")
    cost.add_argument("--hours", type=float, default=Targets.hours, help="length of the event (default 24)")
    cost.add_argument("--peak-hours", type=float, default=Targets.peak_hours,
                      help="hours of peak-equivalent traffic in the event (transfer is priced on these)")
    cost.add_argument("--budget", type=float, default=Targets.budget_eur, help="EUR (default 700)")
    cost.add_argument("--tfvars", default=None, help=f"also write the stormday fleet ({TFVARS_PATH})")
    cost.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    cost.set_defaults(fn=cmd_cost)
