// STORM chat page: a minimal client of protocol v1 (docs/protocol.md).  No build step, no dependencies.
//
// Flow: GET /dev/token -> GET /v1/workspaces/<slug>/channels -> WebSocket /ws: auth -> hello ->
// history (newest first, shown oldest first) -> subscribe with `since` = newest stored offset, so the
// server replays whatever was published but not stored yet -> presence.
//
// Resilience (docs/chat-page.md#when-the-connection-drops): the status shows connecting / online /
// reconnecting / offline.  A reconnectable close (or a failed attempt) waits a random delay in
// [0, min(max, 500 ms * 2^attempt)] (full jitter; a 1012's `retry_ms` is honoured), fetches a fresh token,
// resubscribes with `since` = the last offset seen, and resends the outbox (messages not acknowledged yet,
// kept while offline too, at most OUTBOX_MAX) in order with their cmid, so none is posted twice.  Your
// message shows at once as pending and is reconciled by its ack or its own broadcast, whichever comes
// first.  Each channel event is shown once: by offset, by message id, and by (author, cmid).
// Everything the server or a user wrote reaches the DOM through textContent only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    login: $("login"), user: $("user"), workspace: $("workspace"), channel: $("channel"), connect: $("connect"),
    status: $("status"), title: $("channel-title"), messages: $("messages"), typing: $("typing"),
    composer: $("composer"), input: $("message-input"), send: $("send"), online: $("online"),
    onlineCount: $("online-count"), errors: $("errors"),
  };

  const TYPING_SEND_MS = 2000; // the server drops typing signals sent more often than this
  const TYPING_SHOW_MS = 3000;
  const HISTORY_LIMIT = 50;
  const MAX_ERRORS = 20;
  const PUBLISH_TRIES = 8; // per connection, for unavailable/conflict/rate_limited; reconnects resend anyway
  const OUTBOX_MAX = 200; // unacknowledged messages kept; beyond, sending is refused with outbox_full
  const BACKOFF_BASE_MS = 500;
  const params = new URLSearchParams(location.search);
  // ?reconnect_max_ms=<n> caps the reconnect delay (tests use it; default 30 s)
  const BACKOFF_MAX_MS = Math.max(BACKOFF_BASE_MS, Number(params.get("reconnect_max_ms")) || 30000);
  const RETRY_PUBLISH = new Set(["unavailable", "conflict", "rate_limited"]); // resend with the same cmid
  // close codes after which reconnecting makes sense (storm/protocol/codes.py RECONNECTABLE, plus 1006)
  const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 4002, 4008, 4009, 4029]);
  const CLOSE_NAMES = {
    1000: "normal", 1001: "going away", 1006: "connection lost", 1008: "policy", 1009: "frame too big",
    1011: "server error", 1012: "service restart", 4001: "unauthenticated", 4002: "idle timeout",
    4003: "auth timeout", 4004: "protocol violation", 4008: "slow consumer", 4009: "token expired",
    4010: "revoked", 4029: "too many connections",
  };

  const st = {
    ws: null,
    me: null, // hello.user {id, name}
    limits: null,
    heartbeat: null,
    nextId: 1,
    requests: new Map(), // request id -> {op, channel, cmid}
    channels: new Map(), // channel id -> {id, name, kind}
    channel: null, // channel id we show
    subscribed: null, // channel id we are subscribed to
    lastOffset: 0, // last channel offset processed in `channel`
    byId: new Map(), // message id -> element
    byCmid: new Map(), // cmid of my own messages -> element
    byAuthorCmid: new Map(), // "author cmid" -> element: a message re-published by a retry is shown once
    outbox: new Map(), // cmid -> {channel, text, tries, timer}: sent, not acknowledged yet
    online: new Map(), // user id -> name
    typers: new Map(), // user id -> {name, timer}
    lastTypingSent: 0,
    wantOpen: false, // the user asked to be connected (reconnect on recoverable closes)
    attempt: 0, // failed/lost connections since the last hello: the backoff exponent
    reconnectTimer: null,
    retry: null, // {at, text, code} of the scheduled reconnect, for the status line
    loadSeq: 0,
    connectSeq: 0, // bumped by every connect/disconnect: an older connect() in flight gives up
  };

  // -- small helpers -------------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
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
    ui.status.textContent = text;
    ui.status.title = text;
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
  }

  // Writing stays possible while reconnecting: messages wait in the outbox.
  function refreshComposer() {
    const on = Boolean(st.wantOpen && st.me && st.channel);
    ui.input.disabled = !on;
    ui.send.disabled = !on;
  }

  function unsentNote() {
    const n = st.outbox.size;
    return n ? ` · ${n} unsent` : "";
  }

  // -- HTTP: dev token and channel list ---------------------------------------------------------------
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

  async function fetchToken(user, workspace) {
    const q = new URLSearchParams({ user, workspace });
    const res = await fetch(`/dev/token?${q}`, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!res.ok) throw await httpError(res, "dev token");
    let body;
    try {
      body = await res.json();
    } catch {
      throw Object.assign(new Error("dev token: response is not JSON"), { code: "bad_response" });
    }
    if (!body || typeof body.token !== "string" || !body.token) {
      throw Object.assign(new Error("dev token: response has no token"), { code: "bad_response" });
    }
    return body.token;
  }

  async function fetchChannels(token, workspace) {
    const res = await fetch(`/v1/workspaces/${encodeURIComponent(workspace)}/channels`, {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" }, cache: "no-store",
    });
    if (!res.ok) throw await httpError(res, "channels");
    let body;
    try {
      body = await res.json();
    } catch {
      throw Object.assign(new Error("channels: response is not JSON"), { code: "bad_response" });
    }
    const list = Array.isArray(body) ? body : (body && Array.isArray(body.channels) ? body.channels : null);
    if (!list) throw Object.assign(new Error("channels: unexpected response shape"), { code: "bad_response" });
    return list.filter((c) => c && typeof c.id === "string");
  }

  function channelLabel(c) {
    if (c.kind === "direct") return `@ ${c.name || "direct"}`;
    if (c.kind === "private") return `🔒 ${c.name}`;
    return `# ${c.name}`;
  }

  function fillChannels(list, preferred) {
    const previous = preferred || ui.channel.value;
    const previousName = st.channels.get(previous)?.name;
    st.channels = new Map(list.map((c) => [c.id, c]));
    ui.channel.replaceChildren();
    for (const c of list) {
      const opt = el("option", null, channelLabel(c));
      opt.value = c.id;
      opt.dataset.name = c.name || "";
      ui.channel.appendChild(opt);
    }
    const pick = list.find((c) => c.id === previous)
      || list.find((c) => c.name === previous)
      || list.find((c) => previousName && c.name === previousName)
      || list.find((c) => c.name === "general")
      || list[0];
    if (pick) ui.channel.value = pick.id;
    else ui.channel.appendChild(el("option", null, "(no channels)"));
    ui.channel.disabled = list.length === 0;
  }

  // Token + channel list for the chosen user and workspace: {token} or {error}.  While reconnecting
  // (`retrying`) a failure leaves the channel list alone and is reported by the caller.
  async function loadChannels(preferred, retrying) {
    const seq = ++st.loadSeq;
    const user = ui.user.value;
    const workspace = ui.workspace.value.trim();
    if (!workspace) {
      setStatus("offline", "enter a workspace");
      return { error: new Error("enter a workspace") };
    }
    const quiet = () => st.ws || st.wantOpen; // connect() reports progress itself
    if (!quiet()) setStatus("offline", `loading channels of ${workspace}…`);
    try {
      const token = await fetchToken(user, workspace);
      const list = await fetchChannels(token, workspace);
      if (seq !== st.loadSeq) return { error: new Error("superseded") }; // a newer load won
      fillChannels(list, preferred);
      if (!quiet()) setStatus("offline", `not connected (${list.length} channels in ${workspace})`);
      return { token };
    } catch (caught) {
      let err = caught;
      if (err instanceof TypeError) { // fetch() itself failed: nothing answered
        err = Object.assign(new Error(`server unreachable (${caught.message})`), { code: "network" });
      }
      err.retriable = err.code === "network" || /^http_5/.test(err.code || "");
      if (seq !== st.loadSeq) return { error: err };
      if (retrying && err.retriable) return { error: err };
      ui.channel.replaceChildren(el("option", null, "(unavailable)"));
      ui.channel.disabled = true;
      st.channels = new Map();
      setStatus("offline", err.message);
      showError(err.code || "http", err.message);
      return { error: err };
    }
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
    const { token, error } = await loadChannels(undefined, retrying);
    if (!st.wantOpen || gen !== st.connectSeq) return;
    if (!token) {
      if (retrying && error && error.retriable) scheduleReconnect(error.message);
      else giveUp("not sent: not connected");
      return;
    }
    if (!ui.channel.value || !st.channels.has(ui.channel.value)) {
      setStatus("offline", "no channel to join");
      giveUp("not sent: no channel");
      return;
    }
    openSocket(token, phase);
  }

  // Capped exponential backoff with full jitter: uniform in [0, min(max, base * 2^attempt)].  A 1012
  // (gateway draining) may carry `retry_ms=<n>` in its reason: wait n ms plus up to 1 s of jitter.
  // 4029 (too many connections) waits at least 5 s more.
  function reconnectDelay(code, reason) {
    const hint = code === 1012 && /retry_ms=(\d{1,9})/.exec(reason || "");
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(st.attempt, 30));
    st.attempt += 1;
    if (hint) return Math.min(Number(hint[1]), BACKOFF_MAX_MS) + Math.random() * 1000;
    return Math.random() * ceiling + (code === 4029 ? 5000 : 0);
  }

  function scheduleReconnect(text, code, reason) {
    const delay = reconnectDelay(code, reason);
    st.retry = { at: Date.now() + delay, text, code };
    showRetry();
    clearTimeout(st.reconnectTimer);
    st.reconnectTimer = setTimeout(() => { if (st.wantOpen) connect(true); }, delay);
  }

  function showRetry() {
    const r = st.retry;
    if (!r || ui.status.dataset.state === "online") return;
    const left = Math.max(0, r.at - Date.now()) / 1000;
    setStatus("reconnecting", `reconnecting in ${left.toFixed(1)} s${unsentNote()} · ${r.text}`, r.code);
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
    setStatus(phase, `${phase}: opening the socket…${unsentNote()}`);
    ws.onopen = () => {
      if (st.ws !== ws) return;
      setStatus(phase, `${phase}: authenticating…${unsentNote()}`);
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
        scheduleReconnect(text, ev.code, ev.reason);
      } else {
        setStatus("offline", text, ev.code);
        giveUp("not sent: connection closed");
      }
    };
  }

  function socketGone() {
    st.ws = null;
    st.subscribed = null;
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
      setMessageState(st.byCmid.get(cmid), "waiting for the connection…");
    }
  }

  // Stop (re)connecting; messages still waiting for an ack are marked as not sent.
  function giveUp(why) {
    st.connectSeq++;
    st.wantOpen = false;
    clearTimeout(st.reconnectTimer);
    ui.connect.textContent = "Connect";
    for (const cmid of [...st.outbox.keys()]) failPublish(cmid, why);
    refreshComposer();
  }

  function disconnect() {
    const ws = st.ws;
    if (ws) socketGone();
    giveUp("not sent: disconnected");
    if (ws) ws.close(1000, "bye");
    setStatus("offline", "offline (1000 normal: disconnected)", 1000);
  }

  // -- channel --------------------------------------------------------------------------------------------
  function joinChannel(cid) {
    const reset = cid !== st.channel;
    if (st.subscribed && st.subscribed !== cid) {
      request("unsubscribe", { channel: st.subscribed }, { channel: st.subscribed });
      st.subscribed = null;
    }
    if (reset) clearChannel();
    st.channel = cid;
    const c = st.channels.get(cid);
    ui.title.textContent = c ? channelLabel(c) : cid;
    setOnline(null);
    if (!reset && st.lastOffset > 0) {
      subscribe(cid, st.lastOffset); // resume: the server replays what we missed
    } else {
      // history first; subscribing after it with `since` closes the gap between stored and live messages
      request("history", { channel: cid, limit: HISTORY_LIMIT }, { channel: cid });
    }
  }

  function clearChannel() {
    for (const cmid of [...st.outbox.keys()]) failPublish(cmid, "not sent: left the channel");
    ui.messages.replaceChildren();
    st.byId.clear();
    st.byCmid.clear();
    st.byAuthorCmid.clear();
    st.lastOffset = 0;
    for (const t of st.typers.values()) clearTimeout(t.timer);
    st.typers.clear();
    renderTyping();
  }

  function subscribe(cid, since) {
    const fields = { channel: cid };
    if (Number.isInteger(since) && since >= 0) fields.since = since;
    request("subscribe", fields, { channel: cid });
  }

  // -- events ---------------------------------------------------------------------------------------------
  function handle(ev) {
    if (!ev || typeof ev !== "object") return;
    // replies echo the numeric request id; channel events use `id` for the message id (a string)
    const req = typeof ev.id === "number" ? st.requests.get(ev.id) : undefined;
    if (req) st.requests.delete(ev.id);
    const mine = !ev.channel || ev.channel === st.channel;
    switch (ev.type) {
      case "hello": return onHello(ev);
      case "error": return onError(ev, req);
      case "history": if (mine) onHistory(ev, req); return;
      case "subscribed": return onSubscribed(ev, mine);
      case "presence": if (mine) setOnline(ev.users || []); return;
      case "presence.join": if (mine) addOnline(ev.user, ev.name); return;
      case "presence.leave": if (mine) removeOnline(ev.user); return;
      case "typing": if (mine) onTyping(ev); return;
      case "message": if (mine && fresh(ev)) onMessage(ev); return;
      case "edit": if (mine && fresh(ev)) onEdit(ev); return;
      case "delete": if (mine && fresh(ev)) onDelete(ev); return;
      case "reaction": if (mine && fresh(ev)) onReaction(ev); return;
      case "ack": if (req && req.op === "publish") onPublishAck(ev, req); return;
      case "token.expiring":
        showError("token.expiring", "the token expires soon; the page reconnects with a new one",
          new Date(ev.expires_at * 1000).toLocaleTimeString());
        return;
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

  function onHello(ev) {
    st.me = ev.user;
    st.limits = ev.limits || null;
    st.attempt = 0;
    st.retry = null;
    if (st.limits && st.limits.max_body_chars) ui.input.maxLength = st.limits.max_body_chars;
    const every = Math.max(1, Number(ev.heartbeat_s) || 25) * 1000;
    clearInterval(st.heartbeat);
    st.heartbeat = setInterval(() => send({ op: "ping" }), every);
    setStatus("online", `online: ${ev.user.name} in ${ev.workspace}`);
    joinChannel(ui.channel.value);
    refreshComposer();
  }

  function onError(ev, req) {
    const extra = [ev.field && `field ${ev.field}`, req && `${req.op}`].filter(Boolean).join(", ");
    if (!(req && req.op === "publish" && RETRY_PUBLISH.has(ev.code))) {
      showError(ev.code || "error", ev.message || "", extra);
    }
    if (!req) return;
    if (req.op === "publish" && req.cmid) {
      const item = st.outbox.get(req.cmid);
      if (!item) return;
      if (RETRY_PUBLISH.has(ev.code) && item.tries < PUBLISH_TRIES) {
        const delay = 250 * 2 ** item.tries + Math.random() * 250;
        setMessageState(st.byCmid.get(req.cmid), `retrying (${ev.code})…`);
        item.timer = setTimeout(() => publish(req.cmid), delay);
      } else {
        if (RETRY_PUBLISH.has(ev.code)) showError(ev.code, ev.message || "", extra);
        failPublish(req.cmid, `${ev.code}: ${ev.message}`);
      }
    } else if (req.op === "history" && req.channel === st.channel && st.ws && !st.subscribed) {
      subscribe(req.channel, null); // no stored history: still show live messages
    }
  }

  function onHistory(ev, req) {
    const msgs = Array.isArray(ev.messages) ? ev.messages.slice().reverse() : []; // oldest first
    let newest = 0;
    for (const m of msgs) {
      upsertMessage(m);
      if (Number.isInteger(m.offset) && m.offset > newest) newest = m.offset;
    }
    if (newest > st.lastOffset) st.lastOffset = newest;
    scrollToEnd(true);
    if (req && !req.reload && !st.subscribed) subscribe(ev.channel, newest);
  }

  // The server ended a subscription (ev.reason "removed": we are no longer a member of that channel).
  function onWithdrawn(ev) {
    if (st.subscribed === ev.channel) st.subscribed = null;
    if (ev.channel !== st.channel) return;
    for (const cmid of [...st.outbox.keys()]) failPublish(cmid, "not sent: removed from the channel");
    setOnline(null);
    showError("unsubscribed", `no longer following this channel (${ev.reason})`, "");
  }

  function onSubscribed(ev, mine) {
    if (!mine) { // we switched channels while this subscription was on its way
      if (st.subscribed !== ev.channel) request("unsubscribe", { channel: ev.channel }, { channel: ev.channel });
      return;
    }
    st.subscribed = ev.channel;
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
  }

  function onMessage(ev) {
    upsertMessage(ev);
    const t = st.typers.get(ev.author);
    if (t) {
      clearTimeout(t.timer);
      st.typers.delete(ev.author);
      renderTyping();
    }
  }

  function onPublishAck(ev, req) {
    const item = st.outbox.get(req.cmid);
    if (item) {
      clearTimeout(item.timer);
      st.outbox.delete(req.cmid);
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
    }
  }

  function onEdit(ev) {
    const node = st.byId.get(ev.id);
    if (!node || node.classList.contains("deleted")) return;
    node.querySelector(".text").textContent = ev.text;
    node.querySelector(".edited").hidden = false;
  }

  function onDelete(ev) {
    const node = st.byId.get(ev.id);
    if (node) markDeleted(node);
  }

  function onReaction(ev) {
    const node = st.byId.get(ev.message_id);
    if (!node) return;
    const counts = node._reactions || (node._reactions = {});
    counts[ev.emoji] = Math.max(0, (counts[ev.emoji] || 0) + (ev.remove ? -1 : 1));
    if (!counts[ev.emoji]) delete counts[ev.emoji];
    renderReactions(node);
  }

  // -- messages -------------------------------------------------------------------------------------------
  function fmtTime(ts) {
    const d = new Date(Number(ts) * 1000);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function buildMessage(m) {
    const li = el("li", "message");
    li.dataset.testid = "message";
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
    li.append(head, text, reactions);
    return li;
  }

  function fillMessage(node, m) {
    if (m.id) {
      node.dataset.messageId = m.id;
      st.byId.set(m.id, node);
    }
    if (m.author) node.dataset.author = m.author;
    if (st.me && m.author === st.me.id) node.classList.add("own");
    node.querySelector(".author").textContent = m.author_name || "?";
    if (!m.deleted) node.querySelector(".text").textContent = m.text;
    if (m.edited_ts) node.querySelector(".edited").hidden = false;
    if (m.deleted) markDeleted(node);
    if (m.reactions && typeof m.reactions === "object") {
      node._reactions = { ...m.reactions };
      renderReactions(node);
    }
  }

  // Show a stored or live message once: known ids are updated in place, and my own pending message
  // (same cmid) becomes the confirmed one, whether its ack or its broadcast comes first.
  function upsertMessage(m) {
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
      placeByOffset(node, m.offset);
      scrollToEnd(false);
      return;
    }
    node.dataset.delivered = "true";
    fillMessage(node, m);
    if (node.classList.contains("pending") || node.classList.contains("failed")) {
      node.classList.remove("pending", "failed");
      setMessageState(node, "");
      placeByOffset(node, m.offset);
    } else if (m.offset && !node.dataset.offset) {
      placeByOffset(node, m.offset);
    }
  }

  // Keep confirmed messages ordered by channel offset; pending and failed ones stay at the bottom.
  function placeByOffset(node, offset) {
    const list = ui.messages;
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

  function failPublish(cmid, why) {
    const item = st.outbox.get(cmid);
    if (item) clearTimeout(item.timer);
    st.outbox.delete(cmid);
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
      if (n > 0) box.appendChild(el("span", "reaction", `${emoji} ${n}`));
    }
    box.hidden = box.children.length === 0;
  }

  function scrollToEnd(force) {
    const list = ui.messages;
    const near = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    if (force || near) list.scrollTop = list.scrollHeight;
  }

  function publish(cmid) {
    const item = st.outbox.get(cmid);
    if (!item) return;
    item.timer = null;
    if (st.subscribed !== item.channel) { // offline: resent after the next `subscribed`
      setMessageState(st.byCmid.get(cmid), "waiting for the connection…");
      return;
    }
    item.tries += 1;
    setMessageState(st.byCmid.get(cmid), item.tries > 1 ? "resending…" : "sending…");
    request("publish", { channel: item.channel, cmid, text: item.text }, { channel: item.channel, cmid });
  }

  function sendMessage() {
    const text = ui.input.value;
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
    st.byCmid.set(cmid, node);
    ui.messages.appendChild(node);
    scrollToEnd(true);
    st.outbox.set(cmid, { channel: st.channel, text, tries: 0, timer: null });
    publish(cmid);
    if (!st.ws && st.retry && st.retry.at > Date.now()) showRetry(); // waiting: count the new unsent one
    ui.input.value = "";
    st.lastTypingSent = 0;
  }

  // -- presence and typing -----------------------------------------------------------------------------
  function setOnline(users) {
    st.online = new Map((users || []).map((u) => [u.id, u.name]));
    renderOnline();
  }

  function addOnline(id, name) {
    st.online.set(id, name);
    renderOnline();
  }

  function removeOnline(id) {
    if (st.me && id === st.me.id && st.subscribed) return; // we are still here
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
    ui.onlineCount.textContent = String(users.length);
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

  function maybeSendTyping() {
    if (!st.subscribed || !ui.input.value.trim()) return;
    const now = Date.now();
    if (now - st.lastTypingSent < TYPING_SEND_MS) return;
    if (send({ op: "typing", channel: st.subscribed })) st.lastTypingSent = now;
  }

  // -- wiring -------------------------------------------------------------------------------------------
  ui.login.addEventListener("submit", (e) => {
    e.preventDefault();
    if (st.wantOpen || st.ws) disconnect();
    else connect(false);
  });
  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    sendMessage();
  });
  ui.input.addEventListener("input", maybeSendTyping);
  for (const field of [ui.user, ui.workspace]) {
    field.addEventListener("change", () => {
      if (st.wantOpen || st.ws) disconnect();
      st.channel = null; // another identity: start the view afresh
      clearChannel();
      ui.title.textContent = "no channel";
      loadChannels();
    });
  }
  ui.channel.addEventListener("change", () => {
    if (st.ws && st.me && ui.channel.value) joinChannel(ui.channel.value);
  });

  // ?user=bob&workspace=demo&channel=random[&connect=1] pre-fills the form
  if (params.get("user")) ui.user.value = params.get("user");
  if (params.get("workspace")) ui.workspace.value = params.get("workspace");
  loadChannels(params.get("channel") || undefined).then(({ token }) => {
    if (token && params.get("connect") === "1" && !st.wantOpen) connect(false);
  });
})();
