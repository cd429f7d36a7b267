"""`storm day` profiles (storm_tools/day/profile.py), the population they plan (population.py), the fleet's merge
of per-second figures (fleet.py) and the loss/duplication/order checks (provision.check): no I/O but reading
the shipped profiles."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from storm_cli.main import main
from storm_tools.day import population
from storm_tools.day.fleet import Timeline, addresses, deal
from storm_tools.day.profile import PROFILES_DIR, ProfileError, load, parse, viral, viral_inverse
from storm_tools.day.provision import check

GOOD: dict[str, Any] = {
    "name": "t", "users": 100, "minutes": 2,
    "phases": {"ramp": 0.5, "plateau": 0.3, "decline": 0.2}, "decline_to": 0.5,
    "traffic": {"workspaces": 3, "channels_per_user": 1.5, "dm_share": 0.2},
    "incidents": [{"name": "kill", "action": "kill_role", "at": "peak", "args": {"name": "gateway-1"}},
                  {"name": "slow", "action": "add_toxic", "at": "75%", "duration_s": 5},
                  {"name": "storm", "action": "reconnect_storm", "at": "100s"}],
}


def bad(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the field at the dotted ``path`` (``traffic.dm_share``, ``incidents.0.at``) set to ``value``."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize("name", ["ci", "launch", "hold"])
def test_the_shipped_profiles_parse_and_their_incidents_fall_inside_the_run(name: str) -> None:
    profile, path = load(name)
    assert path.parent == PROFILES_DIR and profile.name == name
    assert profile.incidents, "a launch day has incidents"
    assert profile.offered_msgs_per_s() > 0
    for incident in profile.incidents:
        assert 0 < profile.incident_time(incident) < profile.duration_s


def test_hold_ramps_no_faster_than_its_fleet_admits_and_injects_its_incidents_at_full_strength() -> None:
    profile, _ = load("hold")
    ramp_s = profile.duration_s * profile.phases["ramp"]
    steepest = max(profile.users * (viral((i + 1) / 1000) - viral(i / 1000)) / (ramp_s / 1000) for i in range(1000))
    assert steepest < 0.7 * profile.connect.max_per_s, "leave the fleet's limit room for the retries"
    assert profile.users == 100_000 and profile.offered_msgs_per_s() < 0.15 * load("launch")[0].offered_msgs_per_s()
    for incident in profile.incidents:
        assert profile.incident_time(incident) >= ramp_s, f"{incident.name} falls in the ramp"


def test_capacity_measures_a_steady_window_with_no_incident_in_it() -> None:
    profile, _ = load("capacity")
    assert not profile.incidents
    assert profile.phases["plateau"] * profile.duration_s >= 300, "minutes of steady window, not seconds"
    assert profile.offered_msgs_per_s() > 10 * load("hold")[0].offered_msgs_per_s() * profile.users / 100_000


def test_ci_stays_a_short_run_that_needs_no_restart_of_the_shared_services() -> None:
    profile, _ = load("ci")
    assert profile.duration_s <= 90 and profile.users <= 500
    assert {i.action for i in profile.incidents} <= {"kill_role", "add_toxic", "reconnect_storm"}


@pytest.mark.parametrize(("path", "value", "field"), [
    ("users", 0, "users"),
    ("users", "many", "users"),
    ("minutes", -1, "minutes"),
    ("phases", {"ramp": 0.5, "plateau": 0.5}, "phases"),
    ("phases", {"ramp": 0.5, "plateau": 0.3, "decline": 0.3}, "phases"),
    ("decline_to", 1.5, "decline_to"),
    ("traffic.dm_share", 2, "traffic.dm_share"),
    ("traffic.channel_size_alpha", 1.0, "traffic.channel_size_alpha"),
    ("traffic.workspaces", 1.5, "traffic.workspaces"),
    ("traffic.messages_per_active_user_per_min", "lots", "traffic.messages_per_active_user_per_min"),
    ("traffic.colour", "blue", "traffic.colour"),
    ("connect.max_per_s", -5, "connect.max_per_s"),
    ("incidents.0.action", "explode", "incidents[0].action"),
    ("incidents.1.at", "soon", "incidents[1].at"),
    ("incidents.2.at", "500s", "incidents.storm.at"),
    ("incidents.1.name", "kill", "incidents[1].name"),
    ("incidents.0.args", [1, 2], "incidents[0].args"),
])
def test_a_bad_profile_is_refused_with_the_field_named(path: str, value: Any, field: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse(bad(path, value))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_missing_or_unknown_top_level_field_is_named() -> None:
    data = copy.deepcopy(GOOD)
    del data["users"]
    with pytest.raises(ProfileError, match=r"^users: is required"):
        parse(data)
    with pytest.raises(ProfileError, match=r"^colour: unknown field"):
        parse({**GOOD, "colour": "blue"})


def test_storm_day_with_a_bad_profile_exits_2_naming_the_field(tmp_path: Any, capsys: Any) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(bad("traffic.active_share", 3)))
    assert main(["day", "--profile", str(path)]) == 2
    assert "traffic.active_share: is a share" in capsys.readouterr().err
    assert main(["day", "--profile", "no-such-profile"]) == 2
    assert "no profile 'no-such-profile'" in capsys.readouterr().err


def test_the_curve_ramps_holds_and_declines() -> None:
    profile = parse(GOOD)
    assert viral(0) == 0 and viral(1) == pytest.approx(1)
    assert viral(0.1) < 0.05 and viral(0.5) == pytest.approx(0.5)  # slow start, steep middle
    for y in (0.01, 0.3, 0.9):
        assert viral(viral_inverse(y)) == pytest.approx(y)
    assert profile.target(0) == 0 and profile.target(59.9) == pytest.approx(100, rel=1e-3)
    assert profile.target(70) == 100 and profile.target(120) == pytest.approx(50)
    assert profile.phase_at(10) == "ramp" and profile.phase_at(70) == "plateau" and profile.phase_at(100) == "decline"
    ranks = [profile.connect_at(r) for r in range(100)]
    assert ranks == sorted(ranks) and 0 <= ranks[0] and ranks[-1] <= 60
    assert profile.leave_at(10) is None and 96 <= (profile.leave_at(99) or 0) <= 120
    assert profile.incident_time(profile.incidents[0]) == pytest.approx(63.6)  # peak: 10 % into the plateau


def test_overrides_rescale_and_recheck() -> None:
    profile = parse(GOOD).with_overrides(users=5000, minutes=10)
    assert profile.users == 5000 and profile.duration_s == 600
    with pytest.raises(ProfileError, match=r"^incidents\.storm\.at"):
        parse(GOOD).with_overrides(minutes=1)  # "100s" no longer fits
    with pytest.raises(ProfileError, match=r"^users"):
        parse(GOOD).with_overrides(users=0)


def test_the_population_has_uneven_workspaces_heavy_tailed_channels_and_dms() -> None:
    profile = parse({**GOOD, "users": 2000, "traffic": {"workspaces": 5, "channels_per_user": 2, "dm_share": 0.1,
                                                        "max_channels": 1000}})
    pop = population.plan(profile)
    sizes = [len(w.users) for w in pop.workspaces]
    assert sum(sizes) == 2000 and sizes == sorted(sizes, reverse=True) and sizes[0] > 3 * sizes[-1]
    topics = [len(c.members) for w in pop.workspaces for c in w.channels if c.name.startswith("topic")]
    assert max(topics) > 10 * sorted(topics)[len(topics) // 2]  # a heavy tail
    dms = [c for w in pop.workspaces for c in w.channels if c.kind == "direct"]
    assert dms and all(len(c.members) == 2 for c in dms)
    for w in pop.workspaces:  # everybody is in the announcements channel, which the owner posts to
        assert w.channels[0].name == "announcements" and set(w.channels[0].members) == set(w.users)
        assert pop.active[w.users[0]]
        assert all(set(c.members) <= set(w.users) for c in w.channels)
    assert population.plan(profile).channels_of == pop.channels_of  # the seed makes it reproducible


def test_the_users_who_post_are_the_active_share_drawn_among_those_with_a_channel_to_post_in() -> None:
    """About e^-1 of the users are in no topic channel and no DM at one channel per user: drawing the active
    share among all users left their messages unsent (the capacity profile offered 50 messages a second and
    published 26-40).  The posters are the share of all users, each with somewhere to post."""
    profile = parse({**GOOD, "users": 5000, "traffic": {"workspaces": 10, "channels_per_user": 1.0,
                                                        "active_share": 0.2, "dm_share": 0.04,
                                                        "max_channels": 2000}})
    pop = population.plan(profile)
    owners = {w.users[0] for w in pop.workspaces}
    nowhere = [r for r in range(5000) if not pop.posts_of(r)]
    assert len(nowhere) > 1000  # the population does leave many users without a channel of their own
    assert not [r for r in nowhere if pop.active[r] and r not in owners]
    assert all(c != 0 for r in range(5000) for _, c in pop.posts_of(r))  # never the announcements channel
    assert 0.2 * 5000 * 0.9 <= pop.posters <= 0.2 * 5000 * 1.1 + len(owners), pop.posters
    assert pop.summary()["posters"] == pop.posters


def test_only_the_links_an_incident_faults_go_through_toxiproxy(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Any) -> None:
    """Every byte of a proxied link crosses Toxiproxy (~0.2 of the 2 cores in a 20 000-user run when every
    link of every process went through it): a run proxies the services its add_toxic incidents name, and a
    profile naming a service that does not exist is refused at parse time, not at the incident."""
    import argparse

    from storm_tools.chaos import runner as chaos_runner
    from storm_tools.day.runner import Run

    assert parse(GOOD).faulted_links() == ("pg",)  # add_toxic without a service: PostgreSQL, as the runner does
    assert load("hold")[0].faulted_links() == ("pg",)
    assert parse({**GOOD, "incidents": GOOD["incidents"][:1]}).faulted_links() == ()
    two = copy.deepcopy(GOOD)
    two["incidents"].append({"name": "slow-hz", "action": "add_toxic", "at": "80%", "args": {"service": "hazelcast"}})
    assert parse(two).faulted_links() == ("pg", "hazelcast")
    with pytest.raises(ProfileError, match=r"^incidents\[1\]\.args\.service: must be one of pg, pulsar, hazelcast"):
        parse(bad("incidents.1.args", {"service": "postgres"}))

    seen: dict[str, Any] = {}

    class FakeSession:
        def __init__(self, ns: argparse.Namespace, _report: Any) -> None:
            seen["direct"] = ns.direct

        def open(self) -> None:
            seen["opened"] = True

    monkeypatch.setattr(chaos_runner, "Session", FakeSession)
    monkeypatch.setattr("os.environ", dict(__import__("os").environ))  # the run sets STORM_* for its children
    args = argparse.Namespace(gateways=None, no_services=True, start_timeout=60)
    Run(args, parse(GOOD), tmp_path / "p.yaml", tmp_path).open()
    assert seen == {"direct": ["pulsar", "hazelcast"], "opened": True}


def test_the_channel_cap_holds() -> None:
    profile = parse({**GOOD, "users": 3000, "traffic": {"workspaces": 4, "max_channels": 50, "dm_share": 0.5}})
    pop = population.plan(profile)
    per_workspace_extra = [len(w.channels) - 1 for w in pop.workspaces]
    assert sum(per_workspace_extra) <= 50 + len(pop.workspaces)  # each workspace rounds its share up


def test_deal_and_addresses() -> None:
    users = [[r] for r in range(10)]
    assert deal(users, 3) == [[[0], [3], [6], [9]], [[1], [4], [7]], [[2], [5], [8]]]
    assert addresses(0, 100) == ["127.0.0.2"]
    assert addresses(1, 9000) == ["127.0.0.6", "127.0.0.7", "127.0.0.8"]


def test_the_timeline_merges_processes_by_second() -> None:
    timeline = Timeline(2, lambda t: "ramp")
    timeline.add(0, {"sec": 0, "connections": 5, "connects_ok": 5, "acks": 2, "ack_ms": [1.0, 3.0],
                     "connects_failed": {"503": 1}})
    timeline.add(1, {"sec": 0, "connections": 7, "connects_ok": 7, "acks": 1, "ack_ms": [2.0],
                     "connects_failed": {"503": 2, "timeout": 1}})
    timeline.add(0, {"sec": 1, "connections": 6})
    line = timeline.line(0)
    assert line["connections"] == 12 and line["connects_ok"] == 12 and line["acks"] == 3
    assert line["connects_failed"] == {"503": 3, "timeout": 1}
    assert line["ack_ms"] == {"p50": 2.0, "p95": 3.0, "p99": 3.0} and line["deliver_ms"]["p99"] is None
    assert timeline.line(1)["connections"] == 13  # process 1 had no tick that second: its last gauge
    assert timeline.totals() == {"connects_ok": 12, "acks": 3}  # the fallback when a process sent no result
    assert [x["t"] for x in timeline.ready_lines(4)] == [0.0, 1.0] and timeline.ready_lines(4) == []


def test_the_checks_find_lost_duplicated_and_reordered_messages() -> None:
    acked = [["u1-000000", "m0", "c", 1, "w"], ["u1-000001", "m1", "c", 2, "w"], ["u1-000002", "m2", "c", 3, "w"],
             ["u2-000000", "m3", "c", 4, "w"]]
    rows = [("u1-000000", "m0", "c", 1), ("u1-000001", "m1", "c", 5), ("u1-000002", "m2", "c", 3),
            ("u1-000002", "mX", "c", 9)]
    result = check(acked, rows, {"delivery_duplicates": 1, "delivery_inversions": 2}, 10, 9)
    assert result["acked"] == 4 and result["stored"] == 3 and result["lost"] == 1
    assert result["examples"]["lost"] == ["u2-000000"]
    assert result["duplicates"] == 2 and result["detail"]["stored_twice"] == 1  # + one delivered twice
    assert result["inversions"] == 3 and result["examples"]["inversions"] == ["u1-000002"]  # 5 then 3
    assert not result["stored_exactly_once"]
    clean = check(acked[:2], rows[:2], {}, 2, 2)
    assert (clean["lost"], clean["duplicates"], clean["inversions"], clean["stored_exactly_once"]) == (0, 0, 0, True)


@pytest.mark.parametrize("users", [200, 18_000, 36_001, 100_000])
def test_the_gateways_that_survive_the_loss_of_one_still_hold_every_user(users: int) -> None:
    from storm_tools.day.runner import GATEWAY_CONNECTIONS, topology

    gateways = topology(users)["gateways"]
    assert gateways >= 2
    assert users / (gateways - 1) <= GATEWAY_CONNECTIONS
    assert topology(users, gateways=3)["gateways"] == 3, "--gateways overrides"
