"""The `storm day` profile: the ramp, the traffic model and the incidents of one launch day (docs/storm-day.md).

A profile is a YAML file (``storm_tools/day/profiles/launch.yaml`` and ``ci.yaml`` are the shipped ones, and
say why each figure is what it is).  :func:`parse` turns its mapping into a frozen :class:`Profile` and refuses
anything else with a :class:`ProfileError` that names the field (``traffic.channel_size_alpha: must be a
number > 1, got 'x'``).  No I/O here but :func:`load` reading the file.

The time model (:meth:`Profile.target`): the run lasts ``minutes``, split into ``phases`` (ramp, plateau,
decline, as shares of the run).  During the ramp the number of connected users follows the viral curve, a
logistic normalised to go from 0 to ``users`` (slow start, a steep middle when the launch goes viral, a slow
approach to the peak); the plateau holds ``users``; the decline goes down linearly to ``decline_to`` x users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from storm_tools.chaos.context import SERVICES

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
PHASES = ("ramp", "plateau", "decline")
ACTIONS = ("kill_role", "stop_role", "restart_service", "add_toxic", "reconnect_storm", "connect_spike")
# The service an incident acts on when its args name none (the runner and the link plan read the same default).
DEFAULT_SERVICE = {"add_toxic": "pg", "restart_service": "pulsar"}
VIRAL_STEEPNESS = 10.0  # the logistic's k over the ramp normalised to [0, 1]: 1 % of the users at 10 % of it


class ProfileError(ValueError):
    """A profile that cannot run; ``field`` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Connect:
    max_per_s: float = 500.0  # connects started per second over the whole fleet (what the gateways admit)
    jitter_s: float = 2.0  # each user's connect time is moved by up to this (clients do not start in lockstep)
    backoff_base_s: float = 0.5  # after a failed connect: full jitter over base * 2^attempt, capped
    backoff_max_s: float = 15.0
    timeout_s: float = 15.0  # handshake + auth + subscribes


@dataclass(frozen=True)
class Traffic:
    workspaces: int = 5
    workspace_zipf: float = 1.1  # workspace k has users ~ 1 / k^s
    channels_per_user: float = 2.0  # topic channels a user is in (besides the announcements and DMs)
    channel_size_min: int = 3
    channel_size_alpha: float = 1.5  # topic-channel sizes: Pareto(alpha) x min, capped at channel_size_max
    channel_size_max: int = 2000
    max_channels: int = 3000  # topic + DM channels over the run (each is a Pulsar topic)
    announcement_share: float = 1.0  # share of a workspace's users in its announcements channel
    announcements_per_min: float = 1.0  # per workspace, by its owner
    dm_share: float = 0.1  # share of users in one direct conversation (2 members)
    active_share: float = 0.3  # users who post at all
    messages_per_active_user_per_min: float = 2.0
    typing_per_message: float = 1.0  # typing frames sent before a message
    reactions_per_message: float = 0.3
    read_markers_per_user_per_min: float = 0.5
    history_on_connect: int = 50  # history page fetched for one channel on each connect (0: none)
    heartbeat_s: float = 25.0  # clients ping at this interval (the gateway is told the same)
    reconnects_per_min: float = 0.02  # share of connected users that drop (mobile) and resume, per minute
    reconnect_pause_s: float = 3.0  # how long a dropped mobile client stays away


@dataclass(frozen=True)
class Incident:
    name: str
    action: str
    at: str  # "peak", "<seconds>s" or "<percent>%" of the run
    description: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0  # add_toxic: removed after this; restart_service: down for this long
    experiment: str = ""  # the chaos experiment (chaos-experiments/<stem>.json) it replays, if any

    @property
    def service(self) -> str:
        """The service ``add_toxic`` and ``restart_service`` act on (:data:`DEFAULT_SERVICE` unless named)."""
        return str(self.args.get("service", DEFAULT_SERVICE.get(self.action, "")))


@dataclass(frozen=True)
class Profile:
    name: str
    users: int
    minutes: float
    description: str = ""
    phases: dict[str, float] = field(default_factory=lambda: {"ramp": 0.4, "plateau": 0.4, "decline": 0.2})
    decline_to: float = 0.5
    seed: int = 1
    connect: Connect = field(default_factory=Connect)
    traffic: Traffic = field(default_factory=Traffic)
    incidents: tuple[Incident, ...] = ()
    settle_s: float = 30.0  # after the run: acks, persistence, then the checks

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    def faulted_links(self) -> tuple[str, ...]:
        """The services whose links an incident faults (``add_toxic``): the run puts Toxiproxy on those links
        only.  Every byte of a proxied link crosses one more process: proxying Pulsar and Hazelcast too cost
        a 20 000-user day run ~0.2 of its 2 cores (docs/storm-day.md)."""
        named = {i.service for i in self.incidents if i.action == "add_toxic"}
        return tuple(s for s in SERVICES if s in named)

    def phase_bounds(self) -> list[tuple[str, float, float]]:
        bounds, start = [], 0.0
        for name in PHASES:
            end = start + self.phases[name] * self.duration_s
            bounds.append((name, round(start, 3), round(end, 3)))
            start = end
        return bounds

    def phase_at(self, t: float) -> str:
        for name, start, end in self.phase_bounds():
            if start <= t < end:
                return name
        return "settle" if t >= self.duration_s else "ramp"

    def target(self, t: float) -> float:
        """Users connected at ``t`` seconds into the run, as the curve wants it."""
        (_, _, ramp_end), (_, _, plateau_end), (_, _, end) = self.phase_bounds()
        if t <= 0:
            return 0.0
        if t < ramp_end:
            return self.users * viral(t / ramp_end)
        if t < plateau_end or end <= plateau_end:
            return float(self.users)
        share = min(1.0, (t - plateau_end) / (end - plateau_end))
        return self.users * (1.0 - (1.0 - self.decline_to) * share)

    def connect_at(self, rank: int) -> float:
        """When the ``rank``-th user (0-based) comes online during the ramp: the inverse of the curve."""
        ramp_end = self.phase_bounds()[0][2]
        return ramp_end * viral_inverse((rank + 0.5) / self.users) if ramp_end > 0 else 0.0

    def leave_at(self, rank: int) -> float | None:
        """When the ``rank``-th user leaves during the decline (the last comers leave first), or None."""
        _, start, end = self.phase_bounds()[2]
        keep = self.users * self.decline_to
        if rank < keep or end <= start:
            return None
        share = (self.users - rank) / (self.users - keep)  # 1 for the last comer .. 0 at the kept ones
        return start + (1.0 - share) * (end - start) + (end - start) / max(1.0, self.users - keep)

    def incident_time(self, incident: Incident) -> float:
        at = incident.at.strip()
        if at == "peak":  # fully ramped: a few seconds into the plateau
            _, start, end = self.phase_bounds()[1]
            return start + min(5.0, 0.1 * (end - start))
        if at.endswith("%"):
            return float(at[:-1]) / 100.0 * self.duration_s
        return float(at.rstrip("s"))

    def offered_msgs_per_s(self) -> float:
        tr = self.traffic
        return (self.users * tr.active_share * tr.messages_per_active_user_per_min / 60.0
                + tr.workspaces * tr.announcements_per_min / 60.0)

    def with_overrides(self, users: int | None = None, minutes: float | None = None) -> Profile:
        from dataclasses import replace

        out = replace(self, users=users if users is not None else self.users,
                      minutes=minutes if minutes is not None else self.minutes)
        _check_positive("users", out.users, integer=True)
        _check_positive("minutes", out.minutes)
        for incident in out.incidents:
            if not 0 <= out.incident_time(incident) <= out.duration_s:
                raise ProfileError(f"incidents.{incident.name}.at", f"{incident.at!r} falls outside the "
                                   f"{out.duration_s:.0f} s run")
        return out


def viral(x: float) -> float:
    """The viral curve on [0, 1] -> [0, 1]: a logistic normalised to pass through (0, 0) and (1, 1)."""
    x = min(1.0, max(0.0, x))
    lo, hi = _logistic(0.0), _logistic(1.0)
    return (_logistic(x) - lo) / (hi - lo)


def viral_inverse(y: float) -> float:
    y = min(1.0, max(0.0, y))
    lo, hi = _logistic(0.0), _logistic(1.0)
    v = min(1 - 1e-12, max(1e-12, lo + y * (hi - lo)))
    return min(1.0, max(0.0, 0.5 - math.log(1.0 / v - 1.0) / VIRAL_STEEPNESS))


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-VIRAL_STEEPNESS * (x - 0.5)))


# ---- parsing -------------------------------------------------------------------------------------------------


def _check_positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0 or (value == 0 and not zero):
        what = "an integer" if integer else "a number"
        raise ProfileError(name, f"must be {what} {'>= 0' if zero else '> 0'}, got {value!r}")


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError(name, f"must be a mapping, got {type(value).__name__}")
    return value


def _section(name: str, cls: type[Any], data: Any, shares: tuple[str, ...] = ()) -> Any:
    data = _mapping(name, data)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ProfileError(f"{name}.{unknown[0]}", f"unknown field; expected one of {', '.join(known)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        default = known[key].default
        where = f"{name}.{key}"
        _check_positive(where, value, integer=isinstance(default, int) and not isinstance(default, bool), zero=True)
        if key in shares and value > 1:
            raise ProfileError(where, f"is a share: must be within 0..1, got {value!r}")
        values[key] = value
    return cls(**values)


def parse(data: Any, source: str = "profile") -> Profile:
    """A :class:`Profile` from the YAML mapping, or :class:`ProfileError` naming the first bad field."""
    data = _mapping(source, data)
    top = {"name", "description", "users", "minutes", "phases", "decline_to", "seed", "connect", "traffic",
           "incidents", "settle_s"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ProfileError(unknown[0], f"unknown field; expected one of {', '.join(sorted(top))}")
    for required in ("name", "users", "minutes"):
        if required not in data:
            raise ProfileError(required, "is required")
    if not isinstance(data["name"], str) or not data["name"]:
        raise ProfileError("name", f"must be a non-empty string, got {data['name']!r}")
    _check_positive("users", data["users"], integer=True)
    _check_positive("minutes", data["minutes"])
    phases = _mapping("phases", data.get("phases", {"ramp": 0.4, "plateau": 0.4, "decline": 0.2}))
    if sorted(phases) != sorted(PHASES):
        raise ProfileError("phases", f"must give exactly {', '.join(PHASES)} (shares of the run), got "
                                     f"{', '.join(map(str, phases)) or 'none'}")
    for key, value in phases.items():
        _check_positive(f"phases.{key}", value, zero=True)
    if abs(sum(phases.values()) - 1.0) > 1e-6:
        raise ProfileError("phases", f"shares must add up to 1, got {sum(phases.values()):g}")
    decline_to = data.get("decline_to", 0.5)
    _check_positive("decline_to", decline_to, zero=True)
    if decline_to > 1:
        raise ProfileError("decline_to", f"is a share of the peak: must be within 0..1, got {decline_to!r}")
    seed = data.get("seed", 1)
    _check_positive("seed", seed, integer=True, zero=True)
    settle_s = data.get("settle_s", 30.0)
    _check_positive("settle_s", settle_s)
    connect = _section("connect", Connect, data.get("connect", {}))
    traffic = _section("traffic", Traffic, data.get("traffic", {}),
                       shares=("announcement_share", "dm_share", "active_share"))
    if traffic.workspaces < 1:
        raise ProfileError("traffic.workspaces", "must be at least 1")
    if traffic.channel_size_alpha <= 1:
        raise ProfileError("traffic.channel_size_alpha",
                           f"must be > 1 (a finite mean), got {traffic.channel_size_alpha}")
    if traffic.channel_size_min < 2 or traffic.channel_size_max < traffic.channel_size_min:
        raise ProfileError("traffic.channel_size_min", "must be >= 2 and <= traffic.channel_size_max")
    if traffic.heartbeat_s <= 0:
        raise ProfileError("traffic.heartbeat_s", "must be > 0")
    incidents = _incidents(data.get("incidents", []) or [])
    profile = Profile(name=data["name"], description=str(data.get("description", "")).strip(), users=data["users"],
                      minutes=float(data["minutes"]), phases={k: float(v) for k, v in phases.items()},
                      decline_to=float(decline_to), seed=seed, connect=connect, traffic=traffic, incidents=incidents,
                      settle_s=float(settle_s))
    return profile.with_overrides()


def _incidents(items: Any) -> tuple[Incident, ...]:
    if not isinstance(items, list):
        raise ProfileError("incidents", f"must be a list, got {type(items).__name__}")
    out: list[Incident] = []
    names: set[str] = set()
    allowed = {f.name for f in fields(Incident)}
    for i, item in enumerate(items):
        where = f"incidents[{i}]"
        item = _mapping(where, item)
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ProfileError(f"{where}.{unknown[0]}", f"unknown field; expected one of {', '.join(sorted(allowed))}")
        name = item.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ProfileError(f"{where}.name", f"must be a unique non-empty string, got {name!r}")
        names.add(name)
        if item.get("action") not in ACTIONS:
            raise ProfileError(f"{where}.action", f"must be one of {', '.join(ACTIONS)}, got {item.get('action')!r}")
        at = str(item.get("at", ""))
        if not (at == "peak" or _is_number(at.rstrip("s")) or (at.endswith("%") and _is_number(at[:-1]))):
            raise ProfileError(f"{where}.at", f"must be 'peak', '<seconds>s' or '<percent>%', got {at!r}")
        duration = item.get("duration_s", 0.0)
        _check_positive(f"{where}.duration_s", duration, zero=True)
        args = _mapping(f"{where}.args", item.get("args", {}) or {})
        if item["action"] in DEFAULT_SERVICE and args.get("service", DEFAULT_SERVICE[item["action"]]) not in SERVICES:
            raise ProfileError(f"{where}.args.service", f"must be one of {', '.join(SERVICES)}, "
                                                        f"got {args.get('service')!r}")
        out.append(Incident(name=name, action=item["action"], at=at, description=str(item.get("description", "")),
                            args=dict(args), duration_s=float(duration), experiment=str(item.get("experiment", ""))))
    return tuple(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load(name_or_path: str) -> tuple[Profile, Path]:
    """A profile by name (``launch``, ``ci``: storm_tools/day/profiles/) or by file path."""
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = PROFILES_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ProfileError("profile", f"no profile {name_or_path!r} (neither a file nor one of: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError("profile", f"{path} is not valid YAML: {exc}") from None
    return parse(data, source=str(path)), path
