"""One load process of `storm day`: up to ~9 000 users as raw WebSocket clients (storm_tools/bench/wsclient.py).

Started by :mod:`storm_tools.day.fleet` as ``python -m storm_tools.day.load --child``; its configuration is
the first JSON line on stdin (storm_tools/bench/procs.py), commands follow (``{"cmd": "storm", "share": x}``
drops that share of its connections at once; ``{"cmd": "stop"}`` or EOF ends it).  It reports one ``tick``
line per second of the run on stdout (counters of that second and latency samples, at most
:data:`SAMPLES` of each) and a ``result`` line at the end; every acknowledged publish goes to its
``acked_path`` file (cmid, message id, channel, offset, workspace) for the checks of the runner.

Each user lives as a real client would: it comes online at its time on the ramp (plus jitter), through a
connect pacer (the fleet's connects per second, shared out), authenticates, subscribes to its channels
(resuming with ``since`` after a reconnect), fetches one history page, pings every heartbeat, and goes
offline at its time in the decline.  A failed connect is retried after full-jitter exponential backoff on
the next gateway (what a load balancer does); a mobile drop (``reconnects_per_min``) aborts the socket
(the server sees 1006) and resumes after a pause.  Publishes, typing, reactions and read markers are drawn
per tick from the traffic model's rates (Poisson).  A receiver counts a message id it already had in a
channel as a duplicate, and an offset below the last one it saw there as an inversion.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import random
import re
import sys
import time
from collections import deque
from typing import IO, Any

from storm_tools.bench.wsclient import WSClient, connect

# what the SDK does with a subscribe refused for one of these codes: ask again 0.5-1.5 s later on the same
# connection (sdk/storm_sdk/client.py, ``_on_error``), never a new connection
RETRY_SUBSCRIBE = frozenset({"unavailable", "conflict", "rate_limited"})

SAMPLES = 2000  # latency samples kept per metric and second (reservoir)
TICK_S = 0.1  # the traffic loop's period; the rates count the time that really passed (Load._traffic)
MAX_TICK_S = 1.0  # ... up to this much per tick: a process stalled longer offers less, and the report shows it
_STATUS = re.compile(r"HTTP/1\.1 (\d{3})")


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class Second:
    """The counters of one second of the run."""

    def __init__(self, sec: int) -> None:
        self.sec = sec
        self.c: dict[str, int] = {}
        self.codes: dict[str, dict[str, int]] = {"connects_failed": {}, "errors": {}, "disconnects": {}}
        self.samples: dict[str, list[float]] = {"connect_ms": [], "ack_ms": [], "deliver_ms": []}
        self.seen: dict[str, int] = {"connect_ms": 0, "ack_ms": 0, "deliver_ms": 0}

    def as_dict(self, connections: int) -> dict[str, Any]:
        return {"event": "tick", "sec": self.sec, "connections": connections, **self.c, **self.codes,
                **self.samples}


class Stats:
    def __init__(self, t0: float, rng: random.Random) -> None:
        self.t0, self.rng = t0, rng
        self.cur = Second(self.now_sec())
        self.done: list[Second] = []
        self.totals: dict[str, int] = {}

    def now_sec(self) -> int:
        return int(time.time() - self.t0)

    def second(self) -> Second:
        sec = self.now_sec()
        if sec != self.cur.sec:
            self.done.append(self.cur)
            self.cur = Second(sec)
        return self.cur

    def add(self, key: str, n: int = 1) -> None:
        c = self.second().c
        c[key] = c.get(key, 0) + n
        self.totals[key] = self.totals.get(key, 0) + n

    def code(self, table: str, code: str) -> None:
        t = self.second().codes[table]
        t[code] = t.get(code, 0) + 1

    def latency(self, key: str, ms: float) -> None:
        s = self.second()
        s.seen[key] += 1
        lst = s.samples[key]
        if len(lst) < SAMPLES:
            lst.append(round(ms, 2))
        else:
            j = self.rng.randrange(s.seen[key])
            if j < SAMPLES:
                lst[j] = round(ms, 2)


class User:
    def __init__(self, spec: list[Any]) -> None:
        self.rank: int = spec[0]
        self.slug: str = spec[1]
        self.name: str = spec[2]
        self.connect_at: float = spec[3]
        self.leave_at: float | None = spec[4]
        self.channels: list[str] = spec[5][:200]  # max_subscriptions
        self.active: bool = spec[6]
        self.announce: str | None = spec[7]  # the announcements channel, for its owner only
        subscribed = set(self.channels)
        self.posts: list[str] = [c for c in spec[8] if c in subscribed]  # where its messages go: topics, DMs
        self.last_offset: dict[str, int] = {}
        self.recent: dict[str, deque[str]] = {}
        self.last_message: dict[str, str] = {}
        self.seq = 0
        self.client: DayClient | None = None
        self.pause_s: float | None = None  # set when we drop it on purpose (mobile, storm): reconnect after
        self.connected_once = False
        self.token = ""


class _Bag:
    """Users by rank with O(1) add, remove and random choice (a list plus each rank's place in it)."""

    def __init__(self) -> None:
        self.items: list[User] = []
        self._at: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, user: User) -> None:
        if user.rank not in self._at:
            self._at[user.rank] = len(self.items)
            self.items.append(user)

    def discard(self, rank: int) -> None:
        i = self._at.pop(rank, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self._at[last.rank] = i


class Online:
    """The users online in this process (their connect answered, their subscribes too), indexed the ways the
    traffic loop draws from them, so that a tick costs what it sends, not the number of users: the loop used
    to list and filter every online user and draw an announcement for each, ten times a second, which made a
    40 000-user run's load fleet the machine's largest consumer (0.75 of the 2 cores; py-spy: 43 % of a load
    process in the traffic tick, 2026-12-08).  Dict-like for the rest: ``online[rank] = user``, ``pop``."""

    def __init__(self, beat: int) -> None:
        self.beat = max(1, beat)
        self.by_rank: dict[int, User] = {}
        self.all = _Bag()
        self.posters = _Bag()  # active users with a channel to post in
        self.announcers: dict[int, User] = {}  # announcements channels' owners
        self.beats: dict[int, dict[int, User]] = {}  # rank % beat -> users: who pings in which second

    def __len__(self) -> int:
        return len(self.by_rank)

    def __setitem__(self, rank: int, user: User) -> None:
        self.by_rank[rank] = user
        self.all.add(user)
        if user.active and user.posts:
            self.posters.add(user)
        if user.announce:
            self.announcers[rank] = user
        self.beats.setdefault(rank % self.beat, {})[rank] = user

    def pop(self, rank: int, default: User | None = None) -> User | None:
        user = self.by_rank.pop(rank, None)
        if user is None:
            return default
        self.all.discard(rank)
        self.posters.discard(rank)
        self.announcers.pop(rank, None)
        self.beats.get(rank % self.beat, {}).pop(rank, None)
        return user

    def values(self) -> list[User]:
        return list(self.all.items)

    def pinging(self, second: int) -> list[User]:
        """Who sends its heartbeat in this second of the run: each user every ``beat`` seconds, spread by rank."""
        return list(self.beats.get(-second % self.beat, {}).values())


class DayClient(WSClient):
    """One user's socket: auth -> hello -> subscribe every channel -> ready; then counts what arrives."""

    def __init__(self, host: str, port: int, user: User, load: Load) -> None:
        super().__init__(host, port)
        self.user, self.load = user, load
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for future in (self.opened, self.ready):  # a failure after we stopped waiting is counted, not an error
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.next_id = 1
        self.subscribing = 0
        self.replay_upto: dict[str, int] = {}  # channel -> the offset of `subscribed`: events up to it are replays
        self.pending: dict[int, tuple[str, int, str, str]] = {}  # id -> (op, sent ns, cmid, channel)

    def rid(self) -> int:
        self.next_id += 1
        return self.next_id

    def send_op(self, frame: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_text(json.dumps(frame, separators=(",", ":")))

    def on_open(self) -> None:
        self.send_op({"op": "auth", "token": self.user.token})

    def on_message(self, payload: bytes, binary: bool) -> None:
        for line in payload.split(b"\n"):
            if line.strip():
                try:
                    event = json.loads(line)
                except ValueError:
                    self.load.stats.code("errors", "undecodable")
                    continue
                self.event(event)

    def event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        st = self.load.stats
        if kind == "message":
            self.delivery(ev)
        elif kind == "ack":
            entry = self.pending.pop(int(ev.get("id", 0)), None)
            if entry is not None and entry[0] == "publish":
                st.add("acks")
                st.latency("ack_ms", (time.monotonic_ns() - entry[1]) / 1e6)
                self.load.record(entry[2], str(ev.get("message_id")), entry[3], ev.get("offset"), self.user.slug)
        elif kind == "error":
            code = str(ev.get("code", "error"))
            st.code("errors", code)
            entry = self.pending.pop(int(ev.get("id") or 0), None)
            if entry is not None and entry[0] == "publish":
                st.add("rejected")
            if entry is not None and entry[0] == "subscribe" and code in RETRY_SUBSCRIBE:
                # a transient refusal (the broker restarting, say): the connection stays and the subscribe is
                # asked again, as the SDK does; the connect fails only if it is not ready within its timeout
                st.add("subscribe_retries")
                delay = 0.5 + self.load.rng.uniform(0, 1.0)
                asyncio.get_running_loop().call_later(delay, self.subscribe, entry[3])  # send_op: not if closed
                return
            if not self.ready.done():  # refused during the setup (auth, a subscribe): a failed connect
                self.ready.set_exception(RuntimeError(f"auth:{code}"))
        elif kind == "hello":
            for channel in self.user.channels:
                self.subscribing += 1
                self.subscribe(channel)
            if not self.user.channels and not self.ready.done():
                self.ready.set_result(None)
        elif kind == "subscribed":
            self.pending.pop(int(ev.get("id") or 0), None)
            if ev.get("replayed"):
                self.replay_upto[str(ev.get("channel"))] = int(ev.get("offset", -1))
            self.subscribing -= 1
            if self.subscribing == 0 and not self.ready.done():
                self.ready.set_result(None)
                history = self.load.traffic["history_on_connect"]
                if history and self.user.channels:
                    self.send_op({"op": "history", "id": self.rid(), "channel": self.user.channels[0],
                                  "limit": int(history)})
                    st.add("history")
        elif kind == "reaction":
            st.add("reactions_received")
        elif kind == "typing":
            st.add("typing_received")

    def subscribe(self, channel: str) -> None:
        frame: dict[str, Any] = {"op": "subscribe", "id": self.rid(), "channel": channel}
        if channel in self.user.last_offset:
            frame["since"] = self.user.last_offset[channel]
        self.pending[frame["id"]] = ("subscribe", 0, "", channel)
        self.send_op(frame)

    def delivery(self, ev: dict[str, Any]) -> None:
        st, user = self.load.stats, self.user
        channel, mid, offset = str(ev.get("channel")), str(ev.get("id")), int(ev.get("offset", -1))
        recent = user.recent.setdefault(channel, deque(maxlen=256))
        if mid in recent:
            st.add("delivery_duplicates")
            return
        recent.append(mid)
        if offset <= user.last_offset.get(channel, -1):
            st.add("delivery_inversions")
        user.last_offset[channel] = max(offset, user.last_offset.get(channel, -1))
        user.last_message[channel] = mid
        st.add("deliveries")
        text = str(ev.get("text", ""))
        if offset <= self.replay_upto.get(channel, -1):
            st.add("replayed")  # resumed after a reconnect: its latency is the outage's, not the fan-out's
        elif text.startswith("day:"):
            with contextlib.suppress(ValueError):
                st.latency("deliver_ms", (time.monotonic_ns() - int(text[4:].split(" ", 1)[0])) / 1e6)

    def on_close(self, code: int | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed:{code if code is not None else 1006}"))
        for op, _ns, _cmid, _ch in self.pending.values():
            if op == "publish":
                self.load.stats.add("unacked")
        self.pending.clear()

    def publish(self, channel: str) -> None:
        user = self.user
        cmid = f"{user.name}-{user.seq:06d}"
        user.seq += 1
        rid = self.rid()
        now = time.monotonic_ns()
        self.pending[rid] = ("publish", now, cmid, channel)
        self.send_op({"op": "publish", "id": rid, "channel": channel, "cmid": cmid, "text": f"day:{now} {user.name}"})
        self.load.stats.add("publishes")


def failure_code(exc: BaseException) -> str:
    text = str(exc)
    found = _STATUS.search(text)
    if found:
        return found[1]
    if text.startswith(("auth:", "closed:")):
        return text.split(":", 1)[1]
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return type(exc).__name__


class Load:
    def __init__(self, cfg: dict[str, Any], out: IO[str]) -> None:
        self.cfg = cfg
        self.t0: float = cfg["t0"]
        self.rng = random.Random(cfg.get("seed", 1) * 1000 + cfg["index"])
        self.stats = Stats(self.t0, self.rng)
        self.traffic: dict[str, Any] = cfg["traffic"]
        self.connect: dict[str, Any] = cfg["connect"]
        self.users = [User(spec) for spec in cfg["users"]]
        self.online = Online(int(self.traffic.get("heartbeat_s", 25)))
        self.stopping = False
        self.quiet = False
        self.acked_file = open(cfg["acked_path"], "a")  # closed in close()
        self.out = out
        self._next_connect = 0.0

    def record(self, cmid: str, message_id: str, channel: str, offset: Any, slug: str) -> None:
        self.acked_file.write(json.dumps([cmid, message_id, channel, offset, slug]) + "\n")

    def t(self) -> float:
        return time.time() - self.t0

    async def pace(self) -> None:
        """The fleet's connect rate, this process's share of it: one connect start per interval."""
        interval = 1.0 / max(0.1, float(self.cfg["connect_rate_per_s"]))
        now = time.monotonic()
        slot = max(now, self._next_connect)
        self._next_connect = slot + interval
        if slot > now:
            await asyncio.sleep(slot - now)

    async def life(self, user: User) -> None:
        from storm.adapters.dev_identity import DevIdentity

        ttl = int(self.cfg["run_s"]) + 3600
        user.token = DevIdentity(self.cfg["secret"], ttl_s=ttl).issue(f"dev|{user.name}", user.slug, user.name)
        jitter = self.rng.uniform(0, float(self.connect["jitter_s"]))
        await asyncio.sleep(max(0.0, user.connect_at + jitter - self.t()))
        gateways, sources = self.cfg["gateways"], self.cfg["sources"]
        attempt, turn = 0, user.rank
        while not self.stopping and (user.leave_at is None or self.t() < user.leave_at):
            await self.pace()
            if self.stopping:
                return
            port = gateways[turn % len(gateways)]
            self.stats.add("connect_attempts")
            began = time.monotonic()
            client: DayClient | None = None
            try:
                client = await connect(functools.partial(DayClient, "127.0.0.1", port, user, self), "127.0.0.1", port,
                                       source=sources[user.rank % len(sources)], timeout=self.connect["timeout_s"])
                await asyncio.wait_for(asyncio.shield(client.ready), self.connect["timeout_s"])
            except Exception as exc:  # counted by code; the user backs off and tries the next gateway
                if client is not None and client.transport is not None:
                    client.transport.abort()
                self.stats.code("connects_failed", failure_code(exc))
                attempt += 1
                turn += 1
                cap = min(float(self.connect["backoff_max_s"]), float(self.connect["backoff_base_s"]) * 2 ** attempt)
                retry_after = getattr(exc, "retry_after", None)
                if retry_after:  # an overload answer (503): its Retry-After plus a random share, as the SDK does
                    await asyncio.sleep(retry_after + self.rng.uniform(0, retry_after))
                else:
                    await asyncio.sleep(self.rng.uniform(0, cap))
                continue
            attempt = 0
            self.stats.add("connects_ok")
            self.stats.latency("connect_ms", (time.monotonic() - began) * 1000)
            if user.connected_once:
                self.stats.add("reconnects")
            user.connected_once = True
            user.client = client
            self.online[user.rank] = user
            code = await self._live(user, client)
            self.online.pop(user.rank, None)
            user.client = None
            if code == "left":
                return
            self.stats.code("disconnects", code)
            if user.pause_s is not None:  # dropped on purpose: a mobile client back after a pause
                pause, user.pause_s = user.pause_s, None
                await asyncio.sleep(pause)
            else:  # the server went away: back off a little, next gateway
                turn += 1
                await asyncio.sleep(self.rng.uniform(0, float(self.connect["backoff_base_s"]) * 2))

    async def _live(self, user: User, client: DayClient) -> str:
        leave = None if user.leave_at is None else max(0.0, user.leave_at - self.t())
        done, _ = await asyncio.wait([client.closed], timeout=leave)
        if not done:
            client.close(1000)
            return "left"
        return "1006" if client.close_code is None else str(client.close_code)

    def drop(self, share: float, pause_max_s: float) -> int:
        online = self.online.all.items
        victims = self.rng.sample(online, int(len(online) * share)) if online else []
        for user in victims:
            user.pause_s = self.rng.uniform(0, pause_max_s)
            if user.client is not None and user.client.transport is not None:
                user.client.transport.abort()
        return len(victims)

    async def traffic_loop(self) -> None:
        try:
            await self._traffic()
        except Exception as exc:  # a bug here must show, not silently stop the traffic
            self.out.write(json.dumps({"event": "warning", "message": f"traffic loop failed: {exc!r}"}) + "\n")
            self.out.flush()
            raise

    async def _traffic(self) -> None:
        """Every ``TICK_S``: the profile's rates over the time that really passed since the last tick, and the
        heartbeats and mobile drops of every second of the run's clock that began meanwhile.  A busy load
        process ticks late: counting ticks as ``TICK_S`` each offered a fraction of the profile's rate (a
        5 000-user process at ~24 000 deliveries/s published 25 messages/s of the 150 its profile said) and
        sent heartbeats late enough for the gateways' idle timeout."""
        tr, rng = self.traffic, self.rng
        per_user = float(tr["messages_per_active_user_per_min"]) / 60.0
        mobile = float(tr["reconnects_per_min"]) / 60.0
        last, last_second = time.monotonic(), int(self.t())
        while not self.stopping:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            dt, last = min(MAX_TICK_S, now - last), now
            second = int(self.t())
            seconds, last_second = range(last_second + 1, second + 1), max(last_second, second)
            online = self.online.all.items  # connected and subscribed (Online); not copied: nothing awaits below
            if not online:
                continue
            active = self.online.posters.items  # members never post in the announcements
            n = 0 if self.quiet or not active else poisson(rng, len(active) * per_user * dt)
            for _ in range(n):
                user = rng.choice(active)
                if user.client is None:
                    continue
                channel = rng.choice(user.posts)
                if rng.random() < float(tr["typing_per_message"]):
                    user.client.send_op({"op": "typing", "channel": channel})
                    self.stats.add("typing")
                user.client.publish(channel)
            for user in list(self.online.announcers.values()):
                announce = not self.quiet and poisson(rng, float(tr["announcements_per_min"]) / 60.0 * dt)
                if user.announce and announce and user.client:
                    user.client.publish(user.announce)
            for _ in range(poisson(rng, n * float(tr["reactions_per_message"]))):
                user = rng.choice(online)
                known = list(user.last_message.items())
                if known and user.client is not None:
                    channel, mid = rng.choice(known)
                    user.client.send_op({"op": "react", "id": user.client.rid(), "channel": channel,
                                         "message_id": mid, "emoji": rng.choice(["+1", "tada", "eyes", "fire"])})
                    self.stats.add("reactions")
            for _ in range(poisson(rng, len(online) * float(tr["read_markers_per_user_per_min"]) / 60.0 * dt)):
                user = rng.choice(online)
                if user.last_offset and user.client is not None:
                    channel = rng.choice(list(user.last_offset))
                    user.client.send_op({"op": "read", "id": user.client.rid(), "channel": channel,
                                         "offset": user.last_offset[channel]})
                    self.stats.add("read_markers")
            for sec in seconds:
                for user in self.online.pinging(sec):  # (rank + sec) % beat == 0
                    if user.client is not None:
                        user.client.send_op({"op": "ping"})
            if mobile > 0 and seconds:
                self.drop(min(1.0, mobile * len(seconds)), float(tr["reconnect_pause_s"]))

    async def report_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.flush()

    def flush(self, everything: bool = False) -> None:
        self.stats.second()
        if everything:
            self.stats.done.append(self.stats.cur)
            self.stats.cur = Second(self.stats.cur.sec + 1)
        for second in self.stats.done:
            self.out.write(json.dumps(second.as_dict(len(self.online))) + "\n")
        self.stats.done.clear()
        self.out.flush()

    def close(self) -> None:
        self.stopping = True
        for user in list(self.online.values()):
            if user.client is not None:
                user.client.close(1000)
        self.acked_file.close()


async def child_main() -> None:
    from storm_tools.bench.procs import child_channel, raise_nofile

    chan, cfg = await child_channel()
    raise_nofile()
    load = Load(cfg, sys.stdout)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(load.life(u)) for u in load.users]
    traffic = loop.create_task(load.traffic_loop())
    reporter = loop.create_task(load.report_loop())
    try:
        while True:
            cmd = await chan.command()
            if cmd is None or cmd.get("cmd") == "stop":
                break
            if cmd.get("cmd") == "quiet":  # the end of the run: no new messages, the last acks still come
                load.quiet = True
            elif cmd.get("cmd") == "storm":
                dropped = load.drop(float(cmd.get("share", 0.5)), float(cmd.get("pause_max_s", 1.0)))
                chan.emit("stormed", dropped=dropped)
    finally:
        # the figures first (a starved machine may not leave time for closing thousands of sockets)
        load.stopping = True
        load.flush(everything=True)
        chan.emit("result", totals=load.stats.totals, users=len(load.users), cpu_s=time.process_time())
        load.close()
        for task in [*tasks, traffic, reporter]:
            task.cancel()
        await asyncio.gather(*tasks, traffic, reporter, return_exceptions=True)


def main() -> None:
    if "--child" not in sys.argv:
        raise SystemExit("storm_tools.day.load runs as a child of `storm day` (python -m storm_tools.day.load --child)")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    asyncio.run(child_main())


if __name__ == "__main__":
    main()
