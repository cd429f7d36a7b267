// STORM chat page: a client of protocol v1 (docs/protocol.md, docs/chat-page.md).  No build step, no
// dependencies, nothing loaded from elsewhere.
//
// Flow: GET /dev/directory (workspaces and their members) -> GET /dev/token?workspace=&user_id= ->
// GET /v1/workspaces/<slug>/channels and /members -> WebSocket /ws: auth -> hello -> subscribe to every
// channel of the sidebar (one socket; switching channels never reconnects) -> for the open channel:
// history (newest first, shown oldest first), then subscribe again with `since` = the channel offset the
// history page reflects, so events after it are replayed once and none twice.
//
// Resilience (docs/chat-page.md#when-the-connection-drops): connecting / online / reconnecting / offline.
// A reconnectable close (or a failed attempt) waits a random delay in [0, min(max, 500 ms * 2^attempt)]
// (full jitter; a 1012's `retry_ms` is honoured), fetches a fresh token, resubscribes with `since` = the
// last offset seen, and resends the outbox (messages not acknowledged yet) with their cmid, so none is
// posted twice.  Each channel event is shown once: by offset, by message id, and by (author, cmid).
// Everything the server or a user wrote reaches the DOM through textContent only, never innerHTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    login: $("login"), user: $("user"), workspace: $("workspace"), connect: $("connect"), status: $("status"),
    banner: $("banner"), title: $("channel-title"), scroller: $("scroller"), messages: $("messages"),
    older: $("older"), typing: $("typing"), composer: $("composer"), input: $("message-input"), send: $("send"),
    online: $("online"), onlineCount: $("online-count"), errors: $("errors"), errorsBox: $("errors-box"),
    errorCount: $("error-count"), channelList: $("channel-list"), dmList: $("dm-list"), wsName: $("ws-name"),
    me: $("me"), menu: $("menu"), scrim: $("scrim"), thread: $("thread"), threadMessages: $("thread-messages"),
    threadClose: $("thread-close"), threadComposer: $("thread-composer"), threadInput: $("thread-input"),
  };

  const TYPING_SEND_MS = 2000; // the server drops typing signals sent more often than this
  const TYPING_SHOW_MS = 3000;
  const HISTORY_LIMIT = 50;
  const PRESENCE_PAGES_MAX = 5; // pages of the online list the sidebar loads (each up to the server's page size)
  const PRESENCE_POLL_MS = 30000; // large channels announce no joins/leaves: the list is asked for again
  const MAX_ERRORS = 20;
  const PUBLISH_TRIES = 8; // per connection, for unavailable/conflict/rate_limited; reconnects resend anyway
  const OUTBOX_MAX = 200; // unacknowledged messages kept; beyond, sending is refused with outbox_full
  const BACKOFF_BASE_MS = 500;
  const EMOJI = ["👍", "❤️", "😂", "🎉", "👀", "✅"];
  const params = new URLSearchParams(location.search);
  // ?reconnect_max_ms=<n> caps the reconnect delay (tests use it; default 30 s)
  const BACKOFF_MAX_MS = Math.max(BACKOFF_BASE_MS, Number(params.get("reconnect_max_ms")) || 30000);
  // ?poll_ms=<n>: how often the channel list is refreshed (new and archived channels; default 5 s)
  const POLL_MS = Math.max(200, Number(params.get("poll_ms")) || 5000);
  const RETRY_PUBLISH = new Set(["unavailable", "conflict", "rate_limited"]); // resend with the same cmid
  // close codes after which reconnecting makes sense (storm/protocol/codes.py RECONNECTABLE, plus 1006)
  const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013, 4002, 4008, 4009, 4029]);
  // A refused upgrade (HTTP 503 overload, 429 per address: docs/protocol.md#handshake) reaches a page as a
  // close 1006 of a socket that never opened, and a browser cannot read its Retry-After: such a close waits
  // at least the server's default Retry-After (STORM_HANDSHAKE_RETRY_AFTER_S, 2 s) plus up to as much again.
  const REFUSED_FLOOR_MS = 2000;
  const CLOSE_NAMES = {
    1000: "normal", 1001: "going away", 1006: "connection lost", 1008: "policy", 1009: "frame too big",
    1011: "server error", 1012: "service restart", 4001: "unauthenticated", 4002: "idle timeout",
    4003: "auth timeout", 4004: "protocol violation", 4008: "slow consumer", 4009: "token expired",
    4010: "revoked", 4011: "workspace deleted", 4029: "too many connections",
  };

  const st = {
    ws: null,
    token: null,
    workspace: null, // slug the page is connected to (or loading)
    who: null, // "workspace user" the view belongs to
    directory: [], // [{slug, name, members: [{user_id, name, role, handle}]}] from /dev/directory
    names: new Map(), // user id -> display name (workspace members)
    me: null, // hello.user {id, name}
    limits: null,
    heartbeat: null,
    poller: null,
    nextId: 1,
    requests: new Map(), // request id -> {op, channel, cmid, ...}
    channels: new Map(), // channel id -> {id, name, kind, archived, label, unread, readOffset, seen, members}
    channel: null, // channel id we show
    loaded: false, // the open channel's history is shown and its subscription resumed from it
    lastOffset: 0, // last channel offset processed in `channel`
    nextBefore: null, // `before` of the next older history page of `channel`
    byId: new Map(), // message id -> element
    byCmid: new Map(), // cmid of my own messages -> element
    byAuthorCmid: new Map(), // "author cmid" -> element: a message re-published by a retry is shown once
    replies: new Map(), // parent message id -> <ol> of its replies (shown in the thread pane when open)
    threadOf: null, // parent message id whose thread is open
    outbox: new Map(), // cmid -> {channel, text, thread, tries, timer, inFlight}: not acknowledged yet
    online: new Map(), // user id -> name
    onlineTotal: 0, // users present in the open channel, as the last presence reply counted them
    presenceBroadcast: true, // false: a large channel, joins and leaves are not announced (ADR 0010)
    presencePoll: null,
    typers: new Map(), // user id -> {name, timer}
    lastTypingSent: 0,
    readSent: new Map(), // channel id -> offset of the last `read` sent
    wantOpen: false, // the user asked to be connected (reconnect on recoverable closes)
    attempt: 0, // failed/lost connections since the last hello: the backoff exponent
    reconnectTimer: null,
    retry: null, // {at, text, code} of the scheduled reconnect, for the status line
    connectSeq: 0, // bumped by every connect/disconnect: an older connect() in flight gives up
    noUnread: false, // the server has no `unread` command (an older one): live counts only
  };

  // -- small helpers -------------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function button(cls, text, action, title) {
    const b = el("button", cls, text);
    b.type = "button";
    if (action) b.dataset.action = action;
    if (title) {
      b.title = title;
      b.setAttribute("aria-label", title);
    }
    return b;
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // state: "connecting" (first attempt), "online", "reconnecting" (lost; waiting or trying again),
  // "offline" (not connected and not trying: before Connect, after Disconnect or a final close).
  function setStatus(state, text, code) {
    ui.status.dataset.state = state;
    document.body.dataset.connection = state;
    if (code === undefined) delete ui.status.dataset.code;
    else ui.status.dataset.code = String(code);
    ui.status.textContent = { online: "online", connecting: "connecting…", reconnecting: "reconnecting…",
      offline: "offline" }[state] || state;
    ui.status.title = text;
    ui.banner.hidden = state !== "reconnecting";
    if (state === "reconnecting") ui.banner.textContent = `Reconnecting… ${text}`;
    else if (state === "offline" && text) {
      ui.banner.hidden = false;
      ui.banner.textContent = text;
    }
    ui.banner.dataset.state = state;
    if (state === "offline") document.body.dataset.pane = "sidebar"; // phone: the login is in the drawer
  }

  function showError(code, message, extra) {
    const li = el("li", "error");
    li.dataset.testid = "error";
    li.dataset.code = code;
    li.appendChild(el("span", "time", new Date().toLocaleTimeString()));
    li.appendChild(el("strong", "code", code));
    li.appendChild(el("span", "text", extra ? `${message} (${extra})` : message));
    ui.errors.prepend(li);
    while (ui.errors.children.length > MAX_ERRORS) ui.errors.lastElementChild.remove();
    ui.errorCount.textContent = String(ui.errors.children.length);
    ui.errorsBox.dataset.has = "true";
  }

  // Writing stays possible while reconnecting: messages wait in the outbox.
  function refreshComposer() {
    const c = st.channels.get(st.channel);
    const on = Boolean(st.wantOpen && st.me && st.channel && !(c && c.archived));
    ui.input.disabled = !on;
    ui.send.disabled = !on;
    ui.input.placeholder = c ? (c.archived ? "This channel is archived" : `Message ${c.label}`) : "Message";
  }

  function unsentNote() {
    const n = st.outbox.size;
    return n ? ` · ${n} unsent` : "";
  }

  // -- HTTP -----------------------------------------------------------------------------------------------
  async function httpError(res, what) {
    let detail = res.statusText || "";
    try {
      const body = await res.clone().json();
      const err = body && (body.error || body);
      if (err && (err.message || err.code)) detail = [err.code, err.message].filter(Boolean).join(": ");
    } catch {
      try {
        detail = (await res.text()).slice(0, 200) || detail;
      } catch { /* keep statusText */ }
    }
    const hint = what === "dev token" && res.status === 404 ? " (dev tokens exist only in `storm dev`)" : "";
    const error = new Error(`${what}: HTTP ${res.status} ${detail}${hint}`.trim());
    error.code = `http_${res.status}`;
    return error;
  }

  async function getJson(url, what, token) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await fetch(url, { headers, cache: "no-store" });
    } catch (caught) { // fetch() itself failed: nothing answered
      throw Object.assign(new Error(`server unreachable (${caught.message})`), { code: "network" });
    }
    if (!res.ok) throw await httpError(res, what);
    try {
      return await res.json();
    } catch {
      throw Object.assign(new Error(`${what}: response is not JSON`), { code: "bad_response" });
    }
  }

  function api(path) {
    return `/v1/workspaces/${encodeURIComponent(st.workspace)}${path}`;
  }

  async function fetchToken() {
    const q = new URLSearchParams({ workspace: ui.workspace.value });
    const opt = ui.user.selectedOptions[0];
    if (opt && opt.dataset.userId) q.set("user_id", opt.dataset.userId);
    else q.set("user", ui.user.value);
    const body = await getJson(`/dev/token?${q}`, "dev token");
    if (!body || typeof body.token !== "string" || !body.token) {
      throw Object.assign(new Error("dev token: response has no token"), { code: "bad_response" });
    }
    return body.token;
  }

  async function fetchChannels() {
    const body = await getJson(api("/channels"), "channels", st.token);
    const list = Array.isArray(body && body.channels) ? body.channels : null;
    if (!list) throw Object.assign(new Error("channels: unexpected response shape"), { code: "bad_response" });
    return list.filter((c) => c && typeof c.id === "string");
  }

  async function fetchNames() {
    try {
      const body = await getJson(api("/members"), "members", st.token);
      for (const m of (body && body.members) || []) st.names.set(m.user_id, m.name);
    } catch { /* names are a nicety: DMs fall back to the channel's name */ }
  }

  // A DM is named after the other member(s): GET …/channels/<id>/members (user ids) + the member names.
  async function nameDirect(c) {
    if (c.members) return;
    c.members = [];
    try {
      const body = await getJson(api(`/channels/${c.id}/members`), "channel members", st.token);
      c.members = ((body && body.members) || []).map((m) => (typeof m === "string" ? m : m.user_id || m.id));
    } catch {
      return;
    }
    labelChannel(c);
    renderSidebar();
    if (c.id === st.channel) ui.title.textContent = c.label;
  }

  // -- directory: workspaces and users (dev mode) ----------------------------------------------------------
  async function loadDirectory() {
    try {
      const body = await getJson("/dev/directory", "directory");
      st.directory = Array.isArray(body && body.workspaces) ? body.workspaces : [];
    } catch (err) {
      showError(err.code || "http", err.message);
      st.directory = [];
    }
    if (!st.directory.length) { // no directory (not `storm dev`?): the demo workspace and its users
      st.directory = [{ slug: "demo", name: "demo", members: ["alice", "bob", "carol", "dave"].map(
        (h) => ({ user_id: "", name: h[0].toUpperCase() + h.slice(1), handle: h })) }];
    }
    ui.workspace.replaceChildren();
    for (const w of st.directory) {
      const opt = el("option", null, w.slug === w.name ? w.slug : `${w.name} (${w.slug})`);
      opt.value = w.slug;
      ui.workspace.appendChild(opt);
    }
    const want = params.get("workspace") || "demo";
    if (st.directory.some((w) => w.slug === want)) ui.workspace.value = want;
    fillUsers(params.get("user"));
  }

  function fillUsers(preferred) {
    const w = st.directory.find((x) => x.slug === ui.workspace.value);
    ui.user.replaceChildren();
    for (const m of (w && w.members) || []) {
      const opt = el("option", null, m.name);
      opt.value = m.handle || m.user_id;
      if (m.user_id) opt.dataset.userId = m.user_id;
      ui.user.appendChild(opt);
    }
    if (preferred) {
      const match = [...ui.user.options].find((o) => o.value === preferred || o.textContent === preferred);
      if (match) ui.user.value = match.value;
    }
    ui.connect.disabled = ui.user.options.length === 0;
  }

  // -- sidebar --------------------------------------------------------------------------------------------
  function labelChannel(c) {
    if (c.kind === "direct") {
      const others = (c.members || []).filter((id) => !st.me || id !== st.me.id).map((id) => st.names.get(id))
        .filter(Boolean);
      c.label = others.length ? others.join(", ") : (c.name || "direct message");
    } else {
      c.label = `${c.kind === "private" ? "🔒" : "#"} ${c.name}`;
    }
  }

  function setChannels(list) {
    const seen = new Set();
    for (const raw of list) {
      seen.add(raw.id);
      let c = st.channels.get(raw.id);
      const fresh = !c;
      if (!c) {
        c = { id: raw.id, unread: 0, readOffset: 0, seen: 0, members: null, subscribed: false };
        st.channels.set(raw.id, c);
      }
      Object.assign(c, { name: raw.name, kind: raw.kind, archived: Boolean(raw.archived) });
      labelChannel(c);
      if (c.kind === "direct") nameDirect(c);
      if (fresh && st.me && st.ws) subscribe(c.id, null); // a channel created since: follow it too
    }
    for (const c of st.channels.values()) { // gone from the list: archived (or we were removed)
      if (!seen.has(c.id) && !c.archived) {
        c.archived = true;
        if (c.id === st.channel) {
          showNotice("This channel was archived: you can read it, not write to it.");
          refreshComposer();
        }
      }
    }
    renderSidebar();
  }

  function renderSidebar() {
    const channels = [];
    const dms = [];
    for (const c of st.channels.values()) {
      if (c.archived && c.id !== st.channel) continue; // archived channels leave the sidebar
      (c.kind === "direct" ? dms : channels).push(c);
    }
    const byLabel = (a, b) => String(a.label).localeCompare(String(b.label));
    for (const [list, items] of [[ui.channelList, channels.sort(byLabel)], [ui.dmList, dms.sort(byLabel)]]) {
      list.replaceChildren();
      for (const c of items) {
        const li = el("li");
        const b = button("channel", null, "open");
        b.dataset.testid = "channel-item";
        b.dataset.channel = c.id;
        b.dataset.name = c.name || "";
        b.dataset.kind = c.kind;
        b.appendChild(el("span", "label", c.label));
        if (c.archived) b.appendChild(el("span", "tag", "archived"));
        if (c.unread > 0 && c.id !== st.channel) {
          const badge = el("span", "badge", c.unread > 99 ? "99+" : c.unread);
          badge.dataset.testid = "unread";
          b.appendChild(badge);
          b.classList.add("has-unread");
        }
        if (c.id === st.channel) b.setAttribute("aria-current", "true");
        li.appendChild(b);
        list.appendChild(li);
      }
    }
    document.title = totalUnread() ? `(${totalUnread()}) STORM chat` : "STORM chat";
  }

  function totalUnread() {
    let n = 0;
    for (const c of st.channels.values()) if (c.id !== st.channel) n += c.unread;
    return n;
  }

  function showNotice(text) {
    ui.banner.hidden = false;
    ui.banner.dataset.state = "notice";
    ui.banner.textContent = text;
  }

  // -- WebSocket ------------------------------------------------------------------------------------------
  function send(obj) {
    if (!st.ws || st.ws.readyState !== WebSocket.OPEN) return false;
    st.ws.send(JSON.stringify(obj));
    return true;
  }

  function request(op, fields, meta) {
    const id = st.nextId++;
    st.requests.set(id, { op, ...meta });
    if (!send({ op, id, ...fields })) {
      st.requests.delete(id);
      return null;
    }
    return id;
  }

  async function connect(retrying) {
    const gen = ++st.connectSeq;
    st.wantOpen = true;
    clearTimeout(st.reconnectTimer);
    ui.connect.textContent = "Disconnect";
    const phase = retrying ? "reconnecting" : "connecting";
    setStatus(phase, `${phase}…${unsentNote()}`);
    const workspace = ui.workspace.value;
    const who = `${workspace} ${ui.user.value}`;
    try {
      if (st.who !== who) { // another workspace or user: start the view afresh
        resetWorkspace(workspace);
        st.who = who;
      }
      st.token = await fetchToken();
      if (!st.wantOpen || gen !== st.connectSeq) return;
      const list = await fetchChannels();
      if (!st.names.size) await fetchNames();
      if (!st.wantOpen || gen !== st.connectSeq) return;
      setChannels(list);
    } catch (err) {
      if (!st.wantOpen || gen !== st.connectSeq) return;
      const retriable = err.code === "network" || /^http_5/.test(err.code || "");
      if (retrying && retriable) {
        scheduleReconnect(err.message);
      } else {
        showError(err.code || "http", err.message);
        setStatus("offline", err.message);
        giveUp("not sent: not connected");
      }
      return;
    }
    openSocket(st.token, phase);
  }

  function resetWorkspace(slug) {
    clearChannel();
    st.channel = null;
    st.workspace = slug;
    st.channels = new Map();
    st.names = new Map();
    st.readSent = new Map();
    ui.title.textContent = "no channel";
    ui.me.textContent = "";
    const w = st.directory.find((x) => x.slug === slug);
    ui.wsName.textContent = w ? w.name : slug;
    renderSidebar();
  }

  // Capped exponential backoff with full jitter: uniform in [0, min(max, base * 2^attempt)].  A 1012
  // (gateway draining) may carry `retry_ms=<n>` in its reason: wait n ms plus up to 1 s of jitter.
  // 4029 (too many connections) waits at least 5 s more.  An overload answer (a close 1013 with `retry_ms`,
  // or an upgrade refused before the socket opened) waits its hint plus up to as much again (at least 1 s).
  function reconnectDelay(code, reason, refused) {
    const hint = (code === 1012 || code === 1013) && /retry_ms=(\d{1,9})/.exec(reason || "");
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(st.attempt, 30));
    st.attempt += 1;
    const spread = (ms) => ms + Math.random() * Math.max(ms, 1000);
    if (hint && code === 1013) return spread(Math.min(Number(hint[1]), BACKOFF_MAX_MS));
    if (hint) return Math.min(Number(hint[1]), BACKOFF_MAX_MS) + Math.random() * 1000;
    const backoff = Math.random() * ceiling + (code === 4029 ? 5000 : 0);
    return refused ? Math.max(backoff, Math.min(BACKOFF_MAX_MS, spread(REFUSED_FLOOR_MS))) : backoff;
  }

  function scheduleReconnect(text, code, reason, refused) {
    const delay = reconnectDelay(code, reason, refused);
    st.retry = { at: Date.now() + delay, text, code };
    showRetry();
    clearTimeout(st.reconnectTimer);
    st.reconnectTimer = setTimeout(() => { if (st.wantOpen) connect(true); }, delay);
  }

  function showRetry() {
    const r = st.retry;
    if (!r || ui.status.dataset.state === "online") return;
    const left = Math.max(0, r.at - Date.now()) / 1000;
    setStatus("reconnecting", `trying again in ${left.toFixed(1)} s${unsentNote()}`, r.code);
    ui.banner.title = ui.status.title = r.text; // the technical reason, on hover
  }

  function openSocket(token, phase) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch (err) {
      setStatus("offline", `cannot open WebSocket: ${err.message}`);
      giveUp("not sent: no connection");
      return;
    }
    st.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (st.ws !== ws) return;
      opened = true;
      ws.send(JSON.stringify({ op: "auth", token }));
    };
    ws.onmessage = (msg) => {
      if (st.ws !== ws || typeof msg.data !== "string") return;
      for (const part of msg.data.split("\n")) { // one frame may carry several events
        if (!part) continue;
        let ev;
        try {
          ev = JSON.parse(part);
        } catch {
          showError("client", "unparsable event from the server", part.slice(0, 80));
          continue;
        }
        try {
          handle(ev);
        } catch (err) {
          console.error(err);
          showError("client", `failed to handle ${ev && ev.type} event: ${err.message}`);
        }
      }
    };
    ws.onclose = (ev) => {
      if (st.ws !== ws) return;
      socketGone();
      const name = CLOSE_NAMES[ev.code] || "";
      const why = [name, ev.reason].filter(Boolean).join(": ");
      const text = `closed (${ev.code}${why ? ` ${why}` : ""})`;
      if (st.wantOpen && RECONNECT_CODES.has(ev.code)) {
        scheduleReconnect(text, ev.code, ev.reason, !opened);
      } else {
        setStatus("offline", text, ev.code);
        giveUp("not sent: connection closed");
      }
    };
    void phase;
  }

  function socketGone() {
    st.ws = null;
    st.loaded = false;
    for (const c of st.channels.values()) c.subscribed = false;
    clearInterval(st.heartbeat);
    st.heartbeat = null;
    st.requests.clear();
    refreshComposer();
    setOnline(null);
    for (const t of st.typers.values()) clearTimeout(t.timer);
    st.typers.clear();
    renderTyping();
    for (const [cmid, item] of st.outbox) { // kept: resent with the same cmid once subscribed again
      clearTimeout(item.timer);
      item.timer = null;
      item.tries = 0;
      item.inFlight = false;
      setMessageState(st.byCmid.get(cmid), "waiting for the connection…");
    }
  }

  // Stop (re)connecting; messages still waiting for an ack are marked as not sent.
  function giveUp(why) {
    st.connectSeq++;
    st.wantOpen = false;
    clearTimeout(st.reconnectTimer);
    clearInterval(st.poller);
    st.poller = null;
    ui.connect.textContent = "Connect";
    for (const cmid of [...st.outbox.keys()]) failPublish(cmid, why, false);
    refreshComposer();
  }

  function disconnect() {
    const ws = st.ws;
    if (ws) socketGone();
    giveUp("not sent: disconnected");
    if (ws) ws.close(1000, "bye");
    setStatus("offline", "");
    ui.banner.hidden = true;
  }

  // -- channels -------------------------------------------------------------------------------------------
  function openChannel(cid) {
    if (!st.channels.has(cid)) return;
    document.body.dataset.pane = "main"; // phone: the drawer closes
    if (cid === st.channel) return;
    const prev = st.channels.get(st.channel);
    if (prev) prev.seen = Math.max(prev.seen, st.lastOffset); // later messages there count as unread
    clearChannel();
    st.channel = cid;
    const c = st.channels.get(cid);
    c.unread = 0;
    ui.title.textContent = c.label;
    ui.banner.hidden = !c.archived || ui.status.dataset.state === "reconnecting";
    if (c.archived) showNotice("This channel is archived: you can read it, not write to it.");
    renderSidebar();
    refreshComposer();
    const params2 = new URLSearchParams(location.search);
    params2.set("channel", c.name || cid);
    history.replaceState(null, "", `?${params2}`);
    if (st.me && st.ws) loadChannel();
  }

  // History of the open channel, then a subscription resumed from the offset that history reflects.
  function loadChannel() {
    const cid = st.channel;
    if (!cid) return;
    st.loaded = false;
    if (st.lastOffset > 0) { // reconnected: resume from what we showed, the server replays the gap
      subscribe(cid, st.lastOffset, { resume: true });
      return;
    }
    request("history", { channel: cid, limit: HISTORY_LIMIT }, { channel: cid, first: true });
  }

  function clearChannel() {
    for (const cmid of [...st.outbox.keys()]) failPublish(cmid, "not sent: left the channel", false);
    ui.messages.replaceChildren();
    st.byId.clear();
    st.byCmid.clear();
    st.byAuthorCmid.clear();
    st.replies.clear();
    closeThread();
    st.lastOffset = 0;
    st.loaded = false;
    st.nextBefore = null;
    ui.older.hidden = true;
    setOnline(null);
    for (const t of st.typers.values()) clearTimeout(t.timer);
    st.typers.clear();
    renderTyping();
  }

  function subscribe(cid, since, meta) {
    const fields = { channel: cid };
    if (Number.isInteger(since) && since >= 0) fields.since = since;
    request("subscribe", fields, { channel: cid, ...(meta || {}) });
  }

  // New and archived channels appear within POLL_MS; the unread counts are refreshed with them (they
  // change when the user reads on another device).
  async function pollChannels() {
    if (!st.ws || !st.me) return;
    if (!st.noUnread) request("unread", {}, {});
    try {
      setChannels(await fetchChannels());
    } catch { /* the next poll tries again; the socket's state is what the status shows */ }
  }

  // -- events ---------------------------------------------------------------------------------------------
  function handle(ev) {
    if (!ev || typeof ev !== "object") return;
    // replies echo the numeric request id; channel events use `id` for the message id (a string)
    const req = typeof ev.id === "number" ? st.requests.get(ev.id) : undefined;
    if (req) st.requests.delete(ev.id);
    const open = ev.channel === st.channel;
    const live = open && st.loaded;
    switch (ev.type) {
      case "hello": return onHello(ev);
      case "error": return onError(ev, req);
      case "history": if (open) onHistory(ev, req || {}); return;
      case "subscribed": return onSubscribed(ev, req || {});
      case "presence": if (open) onPresence(ev, req || {}); return;
      case "presence.join": if (open) for (const u of ev.users || []) addOnline(u.id, u.name); return;
      case "presence.leave": if (open) for (const u of ev.users || []) removeOnline(u.id); return;
      case "typing": if (open) onTyping(ev); return;
      case "message":
        if (!open) return countUnread(ev);
        if (live && fresh(ev)) onMessage(ev);
        return;
      case "edit": if (live && fresh(ev)) onEdit(ev); return;
      case "delete": if (live && fresh(ev)) onDelete(ev); return;
      case "reaction": if (live && fresh(ev)) onReaction(ev); return;
      case "ack": if (req && req.op === "publish") onPublishAck(ev, req); return;
      case "unread": return onUnread(ev);
      case "token.expiring": return; // the page reconnects with a fresh token at 4009
      case "unsubscribed": if (!req && ev.reason) onWithdrawn(ev); return; // else the reply to ours
      default: return; // pong, future events
    }
  }

  // A channel event is processed once: its offset must be greater than the last one seen.
  function fresh(ev) {
    if (!Number.isInteger(ev.offset) || ev.offset <= 0) return true;
    if (ev.offset <= st.lastOffset) return false;
    st.lastOffset = ev.offset;
    return true;
  }

  function countUnread(ev) {
    const c = st.channels.get(ev.channel);
    if (!c || !Number.isInteger(ev.offset) || ev.offset <= Math.max(c.seen, c.readOffset)) return;
    c.seen = ev.offset;
    if (st.me && ev.author === st.me.id) return;
    c.unread += 1;
    renderSidebar();
  }

  // Read state from the server (docs/protocol.md, "Read state"): `subscribed` and the reply to `unread`
  // carry the user's read marker of a channel (`read`) and the count of stored messages of others after
  // it (`unread`); both are omitted when 0.  Shared by all the user's devices.
  function applyReadState(cid, rs) {
    const c = st.channels.get(cid);
    if (!c || !rs) return;
    const read = Number.isInteger(rs.read) ? rs.read : 0;
    c.readOffset = Math.max(c.readOffset, read);
    if (cid !== st.channel) c.unread = Number.isInteger(rs.unread) ? rs.unread : 0;
  }

  function onUnread(ev) {
    for (const rs of Array.isArray(ev.channels) ? ev.channels : []) applyReadState(rs.channel, rs);
    renderSidebar();
  }

  function onHello(ev) {
    st.me = ev.user;
    st.limits = ev.limits || null;
    st.attempt = 0;
    st.retry = null;
    ui.me.textContent = ev.user.name;
    ui.me.dataset.userId = ev.user.id;
    if (st.limits && st.limits.max_body_chars) ui.input.maxLength = st.limits.max_body_chars;
    const every = Math.max(1, Number(ev.heartbeat_s) || 25) * 1000;
    clearInterval(st.heartbeat);
    st.heartbeat = setInterval(() => send({ op: "ping" }), every);
    clearInterval(st.poller);
    st.poller = setInterval(pollChannels, POLL_MS);
    setStatus("online", `online: ${ev.user.name} in ${ev.workspace}`);
    for (const c of st.channels.values()) labelChannel(c);
    for (const c of st.channels.values()) {
      if (c.id !== st.channel && !c.archived) subscribe(c.id, null);
    }
    if (!st.channel) {
      const want = params.get("channel");
      const list = [...st.channels.values()].filter((c) => !c.archived);
      const pick = list.find((c) => c.id === want || c.name === want) || list.find((c) => c.name === "general")
        || list[0];
      if (pick) openChannel(pick.id);
    } else {
      loadChannel();
    }
    renderSidebar();
    refreshComposer();
  }

  // edit, delete and react act on stored messages: on a message published a moment ago they get
  // `not_found` until the persistence consumer has stored it, so they are retried a few times first.
  function retryOnMessage(ev, req) {
    if (!req || !req.fields || ev.code !== "not_found" || ev.field === "channel" || (req.tries || 0) >= 6) return false;
    setTimeout(() => request(req.op, req.fields, { ...req, tries: (req.tries || 0) + 1 }), 150 * 2 ** (req.tries || 0));
    return true;
  }

  function onError(ev, req) {
    if (retryOnMessage(ev, req)) return;
    const extra = [ev.field && `field ${ev.field}`, req && `${req.op}`].filter(Boolean).join(", ");
    if (!(req && ((req.op === "publish" && RETRY_PUBLISH.has(ev.code)) || req.op === "unread"))) {
      showError(ev.code || "error", ev.message || "", extra);
    }
    if (!req) return;
    if (req.op === "unread") { // a server without the `unread` command: live counts only
      st.noUnread = true;
      return;
    }
    if (req.op === "publish" && req.cmid) {
      const item = st.outbox.get(req.cmid);
      if (!item) return;
      if (RETRY_PUBLISH.has(ev.code) && item.tries < PUBLISH_TRIES) {
        const delay = 250 * 2 ** item.tries + Math.random() * 250;
        setMessageState(st.byCmid.get(req.cmid), `retrying (${ev.code})…`);
        item.inFlight = false;
        item.timer = setTimeout(() => publish(req.cmid), delay);
      } else {
        if (RETRY_PUBLISH.has(ev.code)) showError(ev.code, ev.message || "", extra);
        failPublish(req.cmid, `${ev.code}: ${ev.message}`);
      }
    } else if (req.op === "history" && req.first && req.channel === st.channel && st.ws) {
      subscribe(req.channel, null, { resume: true }); // no stored history: still show live messages
    }
  }

  // The offset a history page reflects: the channel's head when it was read (`offset`), else the newest
  // message on the page (older servers: reactions after it may then be counted twice).
  function historyOffset(ev, newest) {
    for (const k of ["offset", "head", "channel_offset"]) if (Number.isInteger(ev[k])) return ev[k];
    return newest;
  }

  function onHistory(ev, req) {
    const msgs = Array.isArray(ev.messages) ? ev.messages.slice().reverse() : []; // oldest first
    const keep = ui.scroller.scrollHeight - ui.scroller.scrollTop;
    let newest = 0;
    for (const m of msgs) {
      upsertMessage(m, true);
      if (Number.isInteger(m.offset) && m.offset > newest) newest = m.offset;
    }
    if (req.older || req.first || req.reload) {
      st.nextBefore = Number.isInteger(ev.next_before) ? ev.next_before : null;
      if (msgs.length < HISTORY_LIMIT) st.nextBefore = null; // a short page is the oldest one
      ui.older.hidden = st.nextBefore === null;
    }
    renderDays();
    if (req.older) {
      ui.scroller.scrollTop = ui.scroller.scrollHeight - keep; // stay where the reader was
      ui.older.disabled = false;
      return;
    }
    const at = historyOffset(ev, newest);
    if (at > st.lastOffset) st.lastOffset = at;
    scrollToEnd(true);
    if (req.first) subscribe(ev.channel, at, { resume: true });
    else if (req.reload) st.loaded = true;
    markRead();
  }

  function loadOlder() {
    if (!st.ws || !st.channel || st.nextBefore === null) return;
    ui.older.disabled = true;
    request("history", { channel: st.channel, before: st.nextBefore, limit: HISTORY_LIMIT },
      { channel: st.channel, older: true });
  }

  // The server ended a subscription (ev.reason "removed": we are no longer a member of that channel).
  function onWithdrawn(ev) {
    const c = st.channels.get(ev.channel);
    if (c) c.subscribed = false;
    if (ev.channel !== st.channel) return;
    st.loaded = false;
    for (const cmid of [...st.outbox.keys()]) failPublish(cmid, "not sent: removed from the channel", false);
    setOnline(null);
    showNotice(`You are no longer in this channel (${ev.reason}).`);
  }

  function onSubscribed(ev, req) {
    const c = st.channels.get(ev.channel);
    if (!c) return;
    c.subscribed = true;
    applyReadState(ev.channel, ev);
    if (ev.channel !== st.channel) {
      if (Number.isInteger(ev.offset)) c.seen = Math.max(c.seen, ev.offset); // unread: what comes after
      renderSidebar();
      return;
    }
    if (!req.resume) return; // the first, live-only subscription of a channel we then opened
    st.loaded = true;
    let reload = ev.recovered === false; // the log no longer holds everything we missed
    if (Number.isInteger(ev.offset) && ev.offset < st.lastOffset) {
      // the log is behind what we saw (an embedded server restarted before storing it): trust the log,
      // forget the lost offsets so new events are placed after what we show, and reload stored history
      for (const node of ui.messages.querySelectorAll("[data-offset]")) {
        if (Number(node.dataset.offset) > ev.offset) delete node.dataset.offset;
      }
      st.lastOffset = ev.offset;
      reload = true;
    }
    request("presence", { channel: ev.channel }, { channel: ev.channel });
    if (reload) { // reload stored history (merged by message id: nothing is shown twice)
      request("history", { channel: ev.channel, limit: HISTORY_LIMIT }, { channel: ev.channel, reload: true });
    }
    for (const [cmid, item] of st.outbox) { // unacknowledged messages: same cmid, so never twice
      if (item.channel === ev.channel && !item.timer) publish(cmid);
    }
    markRead();
  }

  function onMessage(ev) {
    upsertMessage(ev);
    renderDays();
    const t = st.typers.get(ev.author);
    if (t) {
      clearTimeout(t.timer);
      st.typers.delete(ev.author);
      renderTyping();
    }
    markRead();
  }

  // Tell the server what we have read in the open channel (the read marker never moves backwards).
  function markRead() {
    const cid = st.channel;
    if (!cid || !st.loaded || document.visibilityState === "hidden") return;
    if ((st.readSent.get(cid) || 0) >= st.lastOffset || st.lastOffset <= 0) return;
    if (request("read", { channel: cid, offset: st.lastOffset }, { channel: cid }) !== null) {
      st.readSent.set(cid, st.lastOffset);
      const c = st.channels.get(cid);
      if (c) c.readOffset = Math.max(c.readOffset, st.lastOffset);
    }
  }

  function onPublishAck(ev, req) {
    const item = st.outbox.get(req.cmid);
    if (item) {
      clearTimeout(item.timer);
      st.outbox.delete(req.cmid);
      publishNext(item.channel);
    }
    const node = st.byCmid.get(req.cmid);
    if (!node || !ev.message_id) return;
    const other = st.byId.get(ev.message_id);
    if (other && other !== node) { // shown already (e.g. from history after a reconnect)
      node.remove();
      st.byCmid.set(req.cmid, other);
      return;
    }
    node.dataset.messageId = ev.message_id;
    st.byId.set(ev.message_id, node);
    if (node.classList.contains("pending")) {
      node.classList.remove("pending");
      setMessageState(node, "");
      placeByOffset(node, ev.offset);
      renderDays();
    }
  }

  function onEdit(ev) {
    const node = st.byId.get(ev.id);
    if (!node || node.classList.contains("deleted")) return;
    node._text = ev.text;
    node.querySelector(".text").textContent = ev.text;
    node.querySelector(".edited").hidden = false;
    mirrorParent(node);
  }

  function onDelete(ev) {
    const node = st.byId.get(ev.id);
    if (node) markDeleted(node);
    if (node) mirrorParent(node);
  }

  // A `reaction` event says the resulting state: the shown count is set to `count` (a replayed event then
  // changes nothing); an event logged by an older server has no `count` and is applied as +1/-1.
  function onReaction(ev) {
    const node = st.byId.get(ev.message_id);
    if (!node) return;
    const counts = node._reactions || (node._reactions = {});
    const mine = node._mine || (node._mine = new Set());
    if (Number.isInteger(ev.count)) counts[ev.emoji] = ev.count;
    else counts[ev.emoji] = Math.max(0, (counts[ev.emoji] || 0) + (ev.remove ? -1 : 1));
    if (!counts[ev.emoji]) delete counts[ev.emoji];
    if (st.me && ev.user === st.me.id) {
      if (ev.remove) mine.delete(ev.emoji);
      else mine.add(ev.emoji);
    }
    renderReactions(node);
    mirrorParent(node);
  }

  // -- messages -------------------------------------------------------------------------------------------
  function fmtTime(ts) {
    const d = new Date(Number(ts) * 1000);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function dayLabel(ts) {
    const d = new Date(Number(ts) * 1000);
    if (Number.isNaN(d.getTime())) return "";
    const today = new Date();
    const yesterday = new Date(Date.now() - 86400000);
    if (d.toDateString() === today.toDateString()) return "Today";
    if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
    return d.toLocaleDateString([], { weekday: "long", month: "long", day: "numeric",
      year: d.getFullYear() === today.getFullYear() ? undefined : "numeric" });
  }

  function buildMessage(m) {
    const li = el("li", "message");
    li.dataset.testid = "message";
    if (Number.isFinite(Number(m.ts))) li.dataset.ts = String(m.ts);
    const avatar = el("div", "avatar", (m.author_name || "?").slice(0, 1).toUpperCase());
    avatar.setAttribute("aria-hidden", "true");
    const body = el("div", "body");
    const head = el("div", "head");
    const author = el("span", "author", m.author_name || "?");
    author.dataset.testid = "message-author";
    const time = el("time", "time", fmtTime(m.ts));
    const d = new Date(Number(m.ts) * 1000);
    if (!Number.isNaN(d.getTime())) {
      time.dateTime = d.toISOString();
      time.title = d.toLocaleString();
    }
    const edited = el("span", "edited", "(edited)");
    edited.hidden = true;
    const state = el("span", "state");
    head.append(author, time, edited, state);
    const text = el("div", "text", m.text);
    text.dataset.testid = "message-text";
    const reactions = el("div", "reactions");
    reactions.hidden = true;
    const replies = button("replies", "", "thread");
    replies.dataset.testid = "replies";
    replies.hidden = true;
    const actions = el("div", "actions");
    actions.append(button("act", "☺", "react", "Add reaction"), button("act", "↪", "thread", "Reply in thread"),
      button("act own-only", "✎", "edit", "Edit"), button("act own-only", "✕", "delete", "Delete"));
    body.append(head, text, reactions, replies);
    li.append(avatar, body, actions);
    li._text = m.text;
    return li;
  }

  function fillMessage(node, m) {
    if (m.id) {
      node.dataset.messageId = m.id;
      st.byId.set(m.id, node);
    }
    if (m.author) node.dataset.author = m.author;
    if (m.thread) node.dataset.thread = m.thread;
    if (Number.isFinite(Number(m.ts))) node.dataset.ts = String(m.ts);
    if (st.me && m.author === st.me.id) node.classList.add("own");
    node.querySelector(".author").textContent = m.author_name || st.names.get(m.author) || "?";
    node.querySelector(".avatar").textContent = (m.author_name || "?").slice(0, 1).toUpperCase();
    if (!m.deleted) {
      node._text = m.text;
      node.querySelector(".text").textContent = m.text;
    }
    if (m.edited_ts) node.querySelector(".edited").hidden = false;
    if (m.deleted) markDeleted(node);
    if (m.reactions && typeof m.reactions === "object") {
      node._reactions = {};
      node._mine = new Set(Array.isArray(m.mine) ? m.mine : []);
      for (const [emoji, v] of Object.entries(m.reactions)) {
        if (Number.isInteger(v)) node._reactions[emoji] = v;
      }
      renderReactions(node);
    }
  }

  function containerFor(m) {
    if (!m.thread) return ui.messages;
    let ol = st.replies.get(m.thread);
    if (!ol) {
      ol = el("ol", "messages replies-list");
      ol.dataset.parent = m.thread;
      st.replies.set(m.thread, ol);
    }
    return ol;
  }

  // Show a stored or live message once: known ids are updated in place, and my own pending message
  // (same cmid) becomes the confirmed one, whether its ack or its broadcast comes first.
  function upsertMessage(m, batch) {
    if (!m || !m.id) return;
    let node = st.byId.get(m.id);
    if (!node && m.cmid && st.me && m.author === st.me.id) node = st.byCmid.get(m.cmid);
    const key = m.cmid && m.author ? `${m.author} ${m.cmid}` : null;
    if (!node && key) node = st.byAuthorCmid.get(key); // the same message published twice by a retry
    if (!node) {
      node = buildMessage(m);
      if (key) st.byAuthorCmid.set(key, node);
      node.dataset.delivered = "true"; // seen in the channel (history or broadcast), not only acked
      fillMessage(node, m);
      placeByOffset(node, m.offset, containerFor(m));
      if (m.thread) updateReplies(m.thread);
      if (!batch) scrollToEnd(false);
      return;
    }
    node.dataset.delivered = "true";
    fillMessage(node, m);
    if (node.classList.contains("pending") || node.classList.contains("failed")) {
      node.classList.remove("pending", "failed");
      setMessageState(node, "");
      placeByOffset(node, m.offset, node.parentNode || containerFor(m));
    } else if (m.offset && !node.dataset.offset) {
      placeByOffset(node, m.offset, node.parentNode || containerFor(m));
    }
  }

  // Keep confirmed messages ordered by channel offset; pending and failed ones stay at the bottom.
  function placeByOffset(node, offset, list) {
    list = list || node.parentNode || ui.messages;
    if (!Number.isInteger(offset) || offset <= 0) {
      if (node.parentNode !== list) list.appendChild(node);
      return;
    }
    node.dataset.offset = String(offset);
    let after = list.lastElementChild;
    while (after && (after === node || after.classList.contains("pending") || after.classList.contains("failed")
      || !after.dataset.offset || Number(after.dataset.offset) > offset)) {
      after = after.previousElementSibling;
    }
    if (after) after.after(node);
    else list.prepend(node);
  }

  // A date separator before the first message of each day (main list).
  function renderDays() {
    for (const sep of ui.messages.querySelectorAll(":scope > .day")) sep.remove();
    let last = "";
    for (const node of [...ui.messages.children]) {
      const label = node.dataset.ts ? dayLabel(node.dataset.ts) : "";
      if (label && label !== last) {
        const sep = el("li", "day");
        sep.dataset.testid = "day";
        sep.appendChild(el("span", null, label));
        node.before(sep);
        last = label;
      }
    }
  }

  function markDeleted(node) {
    node.classList.add("deleted");
    node.querySelector(".text").textContent = "(message deleted)";
    node.querySelector(".edited").hidden = true;
  }

  function setMessageState(node, text, title) {
    if (!node) return;
    const s = node.querySelector(".state");
    s.textContent = text;
    s.title = title || "";
  }

  function failPublish(cmid, why, next = true) { // next: the channel's following message may go now
    const item = st.outbox.get(cmid);
    if (item) clearTimeout(item.timer);
    st.outbox.delete(cmid);
    if (item && next) publishNext(item.channel);
    const node = st.byCmid.get(cmid);
    if (!node || !node.classList.contains("pending")) return;
    node.classList.remove("pending");
    node.classList.add("failed");
    setMessageState(node, "not sent", why);
  }

  function renderReactions(node) {
    const box = node.querySelector(".reactions");
    box.replaceChildren();
    for (const [emoji, n] of Object.entries(node._reactions || {})) {
      if (n <= 0) continue;
      const chip = button("reaction", `${emoji} ${n}`, "toggle-reaction", `react with ${emoji}`);
      chip.dataset.testid = "reaction";
      chip.dataset.emoji = emoji;
      if (node._mine && node._mine.has(emoji)) chip.classList.add("mine");
      box.appendChild(chip);
    }
    box.hidden = box.children.length === 0;
  }

  function updateReplies(parentId) {
    const parent = st.byId.get(parentId);
    const ol = st.replies.get(parentId);
    if (!parent || !ol) return;
    const n = ol.querySelectorAll(":scope > .message").length;
    const b = parent.querySelector(".replies");
    b.hidden = n === 0;
    b.textContent = n === 1 ? "1 reply" : `${n} replies`;
  }

  function scrollToEnd(force) {
    const box = ui.scroller;
    const near = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
    if (force || near) box.scrollTop = box.scrollHeight;
  }

  // -- threads --------------------------------------------------------------------------------------------
  function openThread(parentId) {
    const parent = st.byId.get(parentId);
    if (!parent) return;
    st.threadOf = parentId;
    const copy = parent.cloneNode(true);
    copy.classList.add("parent");
    copy.querySelector(".actions").remove();
    copy.querySelector(".replies").hidden = true;
    delete copy.dataset.testid;
    copy.dataset.testid = "thread-parent";
    const ol = containerFor({ thread: parentId });
    ui.threadMessages.replaceChildren(copy, ol);
    ui.thread.hidden = false;
    document.body.dataset.thread = "open";
    ui.threadInput.focus();
  }

  function mirrorParent(node) {
    if (st.threadOf && node.dataset.messageId === st.threadOf) openThread(st.threadOf);
  }

  function closeThread() {
    st.threadOf = null;
    ui.thread.hidden = true;
    ui.threadMessages.replaceChildren();
    delete document.body.dataset.thread;
  }

  // -- sending --------------------------------------------------------------------------------------------
  function publish(cmid) {
    const item = st.outbox.get(cmid);
    if (!item) return;
    item.timer = null;
    const c = st.channels.get(item.channel);
    if (item.channel !== st.channel || !st.loaded || !c || !c.subscribed) { // resent after `subscribed`
      setMessageState(st.byCmid.get(cmid), "waiting for the connection…");
      return;
    }
    if (item.inFlight) return; // sent, waiting for its answer
    // One message in flight per channel: a later one waits until the earlier is acked or refused for good,
    // so a retried message is never overtaken by one written after it (docs/chat-page.md).
    for (const [other, it] of st.outbox) {
      if (it.channel !== item.channel) continue;
      if (other !== cmid) {
        setMessageState(st.byCmid.get(cmid), "sending…");
        return;
      }
      break;
    }
    item.tries += 1;
    item.inFlight = true;
    setMessageState(st.byCmid.get(cmid), item.tries > 1 ? "resending…" : "sending…");
    const fields = { channel: item.channel, cmid, text: item.text };
    if (item.thread) fields.thread = item.thread;
    request("publish", fields, { channel: item.channel, cmid });
  }

  // The earlier message of `channel` has its answer: the next one of that channel may go.
  function publishNext(channel) {
    for (const [cmid, it] of st.outbox) {
      if (it.channel !== channel) continue;
      if (!it.timer) publish(cmid);
      return;
    }
  }

  function sendMessage(input, thread) {
    const text = input.value;
    if (!text.trim()) return;
    if (!st.wantOpen || !st.me || !st.channel) {
      showError("client", "not connected to a channel");
      return;
    }
    if (st.outbox.size >= OUTBOX_MAX) { // keep the text in the input: nothing is lost silently
      showError("outbox_full", `${OUTBOX_MAX} messages are still waiting to be sent; wait for the connection`);
      return;
    }
    const max = (st.limits && st.limits.max_body_chars) || 4000;
    if (text.length > max) {
      showError("client", `message longer than ${max} characters`);
      return;
    }
    const cmid = uuid();
    const node = buildMessage({ author_name: st.me.name, text, ts: Date.now() / 1000 });
    node.classList.add("own", "pending");
    node.dataset.cmid = cmid;
    node.dataset.author = st.me.id;
    if (thread) node.dataset.thread = thread;
    st.byCmid.set(cmid, node);
    containerFor({ thread }).appendChild(node);
    if (thread) updateReplies(thread);
    else renderDays();
    scrollToEnd(true);
    st.outbox.set(cmid, { channel: st.channel, text, thread, tries: 0, timer: null, inFlight: false });
    publish(cmid);
    if (!st.ws && st.retry && st.retry.at > Date.now()) showRetry(); // waiting: count the new unsent one
    input.value = "";
    autosize(input);
    st.lastTypingSent = 0;
  }

  function startEdit(node) {
    if (node.querySelector(".edit-form") || !node.dataset.messageId) return;
    const form = el("form", "edit-form");
    const area = el("textarea");
    area.value = node._text || "";
    area.dataset.testid = "edit-input";
    area.rows = 2;
    const save = el("button", null, "Save");
    save.type = "submit";
    save.dataset.testid = "edit-save";
    const cancel = button("secondary", "Cancel", null);
    form.append(area, save, cancel);
    node.querySelector(".text").hidden = true;
    node.querySelector(".text").after(form);
    area.focus();
    const done = () => {
      form.remove();
      node.querySelector(".text").hidden = false;
    };
    cancel.addEventListener("click", done);
    area.addEventListener("keydown", (e) => {
      if (e.key === "Escape") done();
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const text = area.value;
      if (text.trim() && text !== node._text) {
        const fields = { channel: st.channel, message_id: node.dataset.messageId, text };
        request("edit", fields, { channel: st.channel, fields });
      }
      done();
    });
  }

  function react(node, emoji) {
    if (!node.dataset.messageId) return;
    const remove = Boolean(node._mine && node._mine.has(emoji));
    const fields = { channel: st.channel, message_id: node.dataset.messageId, emoji };
    if (remove) fields.remove = true;
    request("react", fields, { channel: st.channel, fields });
  }

  function showPalette(node, anchor) {
    const old = document.querySelector(".palette");
    if (old) {
      const same = old._node === node;
      old.remove();
      if (same) return;
    }
    const pal = el("div", "palette");
    pal.dataset.testid = "emoji-palette";
    pal._node = node;
    for (const emoji of EMOJI) {
      const b = button("emoji", emoji, "pick-emoji", `react with ${emoji}`);
      b.dataset.emoji = emoji;
      pal.appendChild(b);
    }
    anchor.closest(".actions").after(pal);
  }

  function onMessageClick(e) {
    const target = e.target.closest("[data-action]");
    if (!target) return;
    const node = target.closest(".message");
    if (!node || node.classList.contains("parent")) return;
    const action = target.dataset.action;
    if (action === "react") showPalette(node, target);
    else if (action === "pick-emoji") {
      react(node, target.dataset.emoji);
      target.closest(".palette").remove();
    } else if (action === "toggle-reaction") react(node, target.dataset.emoji);
    else if (action === "thread" && node.dataset.messageId && !node.dataset.thread) openThread(node.dataset.messageId);
    else if (action === "edit") startEdit(node);
    else if (action === "delete" && node.dataset.messageId) {
      if (window.confirm("Delete this message?")) {
        const fields = { channel: st.channel, message_id: node.dataset.messageId };
        request("delete", fields, { channel: st.channel, fields });
      }
    }
  }

  // -- presence and typing -----------------------------------------------------------------------------
  function setOnline(users) {
    st.online = new Map((users || []).map((u) => [u.id, u.name]));
    st.onlineTotal = st.online.size;
    st.presenceBroadcast = true;
    renderOnline();
  }

  // One page of a channel's users: the first replaces the list, the next ones (asked for with the
  // reply's next_cursor, at most PRESENCE_PAGES_MAX) add to it. In a large channel (broadcast: false)
  // the server announces no joins or leaves, so the list is asked for again every PRESENCE_POLL_MS.
  function onPresence(ev, req) {
    const page = req.page || 0;
    if (page === 0) st.online = new Map();
    for (const u of ev.users || []) st.online.set(u.id, u.name);
    st.onlineTotal = Number.isInteger(ev.count) ? ev.count : st.online.size;
    st.presenceBroadcast = ev.broadcast !== false;
    renderOnline();
    if (ev.next_cursor && page + 1 < PRESENCE_PAGES_MAX) {
      request("presence", { channel: ev.channel, cursor: ev.next_cursor }, { channel: ev.channel, page: page + 1 });
    } else if (!st.presenceBroadcast) {
      const channel = ev.channel;
      clearTimeout(st.presencePoll);
      st.presencePoll = setTimeout(() => {
        if (st.channel === channel) request("presence", { channel }, { channel });
      }, PRESENCE_POLL_MS);
    }
  }

  function addOnline(id, name) {
    st.online.set(id, name);
    renderOnline();
  }

  function removeOnline(id) {
    if (st.me && id === st.me.id && st.loaded) return; // we are still here
    st.online.delete(id);
    renderOnline();
  }

  function renderOnline() {
    ui.online.replaceChildren();
    const users = [...st.online.entries()].sort((a, b) => String(a[1]).localeCompare(String(b[1])));
    for (const [id, name] of users) {
      const li = el("li", "user", name);
      li.dataset.testid = "online-user";
      li.dataset.userId = id;
      if (st.me && id === st.me.id) {
        li.classList.add("me");
        li.appendChild(el("span", "you", " (you)"));
      }
      ui.online.appendChild(li);
    }
    const total = st.presenceBroadcast ? users.length : Math.max(st.onlineTotal, users.length);
    ui.onlineCount.textContent = String(total);
  }

  function onTyping(ev) {
    if (st.me && ev.user === st.me.id) return; // the server echoes ours to our own connections
    const prev = st.typers.get(ev.user);
    if (prev) clearTimeout(prev.timer);
    const timer = setTimeout(() => {
      st.typers.delete(ev.user);
      renderTyping();
    }, TYPING_SHOW_MS);
    st.typers.set(ev.user, { name: ev.name, timer });
    renderTyping();
  }

  function renderTyping() {
    const names = [...st.typers.values()].map((t) => t.name);
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "several people are typing…";
    ui.typing.textContent = text;
  }

  function maybeSendTyping(input) {
    if (!st.loaded || !input.value.trim()) return;
    const now = Date.now();
    if (now - st.lastTypingSent < TYPING_SEND_MS) return;
    if (send({ op: "typing", channel: st.channel })) st.lastTypingSent = now;
  }

  function autosize(area) {
    area.style.height = "auto";
    area.style.height = `${Math.min(area.scrollHeight, 160)}px`;
  }

  // -- wiring -------------------------------------------------------------------------------------------
  ui.login.addEventListener("submit", (e) => {
    e.preventDefault();
    if (st.wantOpen || st.ws) disconnect();
    else connect(false);
  });
  for (const [form, input, thread] of [[ui.composer, ui.input, () => null],
    [ui.threadComposer, ui.threadInput, () => st.threadOf]]) {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      sendMessage(input, thread());
    });
    input.addEventListener("input", () => {
      maybeSendTyping(input);
      autosize(input);
    });
    input.addEventListener("keydown", (e) => { // Enter sends, Shift+Enter is a new line
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        form.requestSubmit();
      }
    });
  }
  ui.workspace.addEventListener("change", () => {
    if (st.wantOpen || st.ws) disconnect();
    fillUsers();
  });
  ui.user.addEventListener("change", () => {
    if (st.wantOpen || st.ws) disconnect();
  });
  for (const list of [ui.channelList, ui.dmList]) {
    list.addEventListener("click", (e) => {
      const b = e.target.closest("[data-channel]");
      if (b) openChannel(b.dataset.channel);
    });
  }
  ui.messages.addEventListener("click", onMessageClick);
  ui.threadMessages.addEventListener("click", onMessageClick);
  ui.older.addEventListener("click", loadOlder);
  ui.threadClose.addEventListener("click", closeThread);
  ui.menu.addEventListener("click", () => {
    document.body.dataset.pane = document.body.dataset.pane === "sidebar" ? "main" : "sidebar";
  });
  ui.scrim.addEventListener("click", () => { document.body.dataset.pane = "main"; });
  document.addEventListener("visibilitychange", markRead);
  setInterval(() => { if (st.retry && !st.ws && st.wantOpen) showRetry(); }, 500);

  // ?user=bob&workspace=demo&channel=random[&connect=1] pre-fills the form
  loadDirectory().then(() => {
    if (params.get("connect") === "1" && !st.wantOpen) connect(false);
  });
})();
