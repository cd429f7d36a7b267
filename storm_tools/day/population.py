"""Who is in which workspace and channel during a `storm day` run: the traffic model's population (no I/O).

:func:`plan` draws it from the profile's ``traffic`` section with the profile's seed, so a rerun meets the
same population:

* workspaces of very different sizes: workspace k holds users ~ 1 / k^s (Zipf, ``workspace_zipf``), at
  least 2 each;
* per workspace one announcements channel (``announcement_share`` of its users; only the owner posts in it);
* topic channels whose sizes follow a Pareto tail (``channel_size_alpha`` from ``channel_size_min``, capped at
  ``channel_size_max`` and the workspace's size): many small ones, a few very large ones, until each user
  is in ``channels_per_user`` of them on average;
* direct conversations of 2 (``dm_share`` of the users are in one);
* the topic + direct channels of the whole run are capped at ``max_channels`` (each one is a Pulsar topic);
* who posts: ``active_share`` of the users, drawn among those in a topic channel or a DM (where they post).

User ranks are global (0 .. users-1) and interleave the workspaces, so the ramp brings every workspace
online together rather than one after the other.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from storm_tools.day.profile import Profile


@dataclass
class ChannelPlan:
    kind: str  # public (announcements, topics) or direct
    name: str
    members: list[int]  # user ranks


@dataclass
class WorkspacePlan:
    index: int
    users: list[int]  # ranks; users[0] is the owner
    channels: list[ChannelPlan] = field(default_factory=list)


@dataclass
class Population:
    workspaces: list[WorkspacePlan]
    workspace_of: list[int]  # rank -> workspace index
    channels_of: list[list[tuple[int, int]]]  # rank -> [(workspace index, channel index)]
    active: list[bool]  # rank -> posts messages

    def posts_of(self, rank: int) -> list[tuple[int, int]]:
        """The channels ``rank`` posts its messages in: its topic channels and DMs, not the announcements."""
        return _posts(self.channels_of[rank])

    @property
    def posters(self) -> int:
        """Active users with a channel to post in: who sends the profile's messages."""
        return sum(1 for rank, on in enumerate(self.active) if on and self.posts_of(rank))

    @property
    def channel_count(self) -> int:
        return sum(len(w.channels) for w in self.workspaces)

    def summary(self) -> dict[str, object]:
        sizes = sorted((len(c.members) for w in self.workspaces for c in w.channels), reverse=True)
        return {"workspaces": [len(w.users) for w in self.workspaces], "channels": len(sizes),
                "largest_channels": sizes[:5], "median_channel": sizes[len(sizes) // 2] if sizes else 0,
                "direct": sum(1 for w in self.workspaces for c in w.channels if c.kind == "direct"),
                "subscriptions": sum(len(c) for c in self.channels_of), "active_users": sum(self.active),
                "posters": self.posters}


def _posts(channels: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Of a user's (workspace, channel) pairs, those it posts in: every one but the announcements (index 0)."""
    return [(w, c) for w, c in channels if c != 0]


def workspace_sizes(users: int, count: int, zipf: float) -> list[int]:
    count = max(1, min(count, users // 2))
    weights = [1.0 / (k ** zipf) for k in range(1, count + 1)]
    total = sum(weights)
    sizes = [max(2, int(users * w / total)) for w in weights]
    sizes[0] += users - sum(sizes)  # the rounding goes to the largest
    while sizes[0] < 2 and len(sizes) > 1:  # tiny runs: fold the last workspace into the first
        sizes[0] += sizes.pop()
    return sizes


def plan(profile: Profile) -> Population:
    tr = profile.traffic
    rng = random.Random(profile.seed)
    sizes = workspace_sizes(profile.users, tr.workspaces, tr.workspace_zipf)
    workspaces = [WorkspacePlan(i, []) for i in range(len(sizes))]
    # interleave: rank r goes to the workspace furthest below its share so far
    filled = [0] * len(sizes)
    workspace_of: list[int] = []
    for rank in range(profile.users):
        w = min(range(len(sizes)), key=lambda i: (filled[i] / sizes[i], i))
        filled[w] += 1
        workspaces[w].users.append(rank)
        workspace_of.append(w)
    for ws in workspaces:
        n = len(ws.users)
        budget = max(1, math.ceil(tr.max_channels * n / profile.users))  # this workspace's share of the cap
        announce = [u for u in ws.users if u == ws.users[0] or rng.random() < tr.announcement_share]
        ws.channels.append(ChannelPlan("public", "announcements", announce))
        pairs = min(int(n * tr.dm_share / 2), budget // 2)  # DMs first: at most half the workspace's channels
        talkers = rng.sample(ws.users, min(n - n % 2, pairs * 2))
        dms = [ChannelPlan("direct", f"dm-{k}", [talkers[2 * k], talkers[2 * k + 1]])
               for k in range(len(talkers) // 2)]
        budget -= len(dms)
        wanted = int(n * tr.channels_per_user)
        placed = 0
        cap = max(2, min(tr.channel_size_max, n))
        while placed < wanted and budget > 0 and n >= 2:
            size = min(cap, max(2, int(tr.channel_size_min * rng.paretovariate(tr.channel_size_alpha))))
            members = rng.sample(ws.users, size)
            ws.channels.append(ChannelPlan("public", f"topic-{len(ws.channels)}", members))
            placed += size
            budget -= 1
        ws.channels.extend(dms)
    channels_of: list[list[tuple[int, int]]] = [[] for _ in range(profile.users)]
    for ws in workspaces:
        for c, channel in enumerate(ws.channels):
            for rank in channel.members:
                channels_of[rank].append((ws.index, c))
    # Who posts: ``active_share`` of the users, drawn among those with a channel to post in.  Members post in
    # their topic channels and DMs, never in the announcements channel (index 0: only its owner posts there,
    # at ``announcements_per_min``); about e^-channels_per_user of the users are in no topic channel and no DM,
    # and drawing the share among all users left their messages unsent (the capacity profile offered 50
    # messages a second and published 26-40).  So the draw is scaled to the users who can post, and the
    # offered rate (users x active_share x messages per minute) holds while at least that share can post.
    can_post = [bool(_posts(channels)) for channels in channels_of]
    posters = sum(can_post)
    share = min(1.0, tr.active_share * profile.users / posters) if posters else 0.0
    active = [ok and rng.random() < share for ok in can_post]
    for ws in workspaces:
        active[ws.users[0]] = True  # the owner posts the announcements (and in its channels, if any)
    return Population(workspaces, workspace_of, channels_of, active)
