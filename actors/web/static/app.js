// raychat's chat page: one WebSocket (PROTOCOL.md), history over HTTP, no framework.
//
// Every run's events are applied strictly in `seq` order. A gap (a reconnect, a
// second socket joining mid-run) asks the server to `resume` from the last seq
// applied; after a dropped connection the page reconnects, resumes every
// unfinished run and re-sends the chats not yet accepted (same client_msg_id,
// so nothing is stored twice).
(() => {
  "use strict";

  const BASE = document.body.dataset.base || "";
  const WS_URL = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + BASE +
    "/api/websocket/ws?token=";
  const FINAL = new Set(["run.completed", "run.cancelled", "run.failed"]);
  const ACTIVE = new Set(["waiting", "queued", "streaming"]);  // a reply not yet ended
  const HISTORY_LIMIT = 200;
  const PING_EVERY_MS = 15000;
  const SILENT_LIMIT_MS = 45000;
  const RECONNECT_MAX_MS = 5000;
  const SUGGESTIONS = [
    "Remind me to water the plants",
    "What are my todos?",
    "I prefer tea over coffee",
    "Tell me a story in 120 words",
  ];

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const storage = {
    get(key, fallback) {
      try {
        const raw = localStorage.getItem(key);
        return raw === null ? fallback : JSON.parse(raw);
      } catch (_) {
        return fallback;
      }
    },
    set(key, value) {
      try {
        localStorage.setItem(key, JSON.stringify(value));
      } catch (_) { /* storage full or disabled: the page still works */ }
    },
    remove(key) {
      try {
        localStorage.removeItem(key);
      } catch (_) { /* ignore */ }
    },
  };

  function randomId(prefix) {
    const bytes = new Uint8Array(9);
    crypto.getRandomValues(bytes);
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function tokenUser(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part.padEnd(part.length + (4 - part.length % 4) % 4, "=")));
      return typeof claims.sub === "string" ? claims.sub : "user";
    } catch (_) {
      return "user";
    }
  }

  // ---------------------------------------------------------------- state
  const state = {
    token: null,
    user: null,
    sessions: [],        // [{id, title, updated}], newest first
    current: null,       // the open session's id
    chats: new Map(),    // session id -> {messages, loaded, loading}
    runs: new Map(),     // run id -> {sessionId, msg, lastSeq, resumeFrom, final, fromHistory, cancel}
    outbox: new Map(),   // client_msg_id -> {frame, userMsg, sessionId}: sent, not yet accepted
    onBusy: storage.get("raychat.onBusy", "enqueue"),
  };

  const sessionsKey = () => "raychat.sessions." + state.user;
  const currentKey = () => "raychat.current." + state.user;

  // ---------------------------------------------------------------- socket
  const conn = {
    ws: null,
    wanted: false,
    attempts: 0,
    connects: 0,
    lastRx: 0,
    retry: null,
    heartbeat: null,

    start() {
      this.wanted = true;
      this.open();
      this.heartbeat = setInterval(() => this.beat(), PING_EVERY_MS);
    },

    stop() {
      this.wanted = false;
      clearTimeout(this.retry);
      clearInterval(this.heartbeat);
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close(1000, "signed out");
      setStatus("offline");
    },

    isOpen() {
      return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
    },

    open() {
      clearTimeout(this.retry);
      setStatus(this.connects ? "reconnecting" : "connecting");
      const ws = new WebSocket(WS_URL + encodeURIComponent(state.token));
      this.ws = ws;
      ws.onopen = () => {
        if (ws !== this.ws) return;
        this.attempts = 0;
        this.connects += 1;
        this.lastRx = Date.now();
        setStatus("connected");
        onConnected();
      };
      ws.onmessage = (message) => {
        if (ws !== this.ws) return;
        this.lastRx = Date.now();
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        handleEvent(event);
      };
      ws.onclose = (close) => {
        if (ws !== this.ws) return;
        this.ws = null;
        if (close.code === 4401) {
          signOut("The server did not accept this token (expired, or signed with another secret).");
        } else if (this.wanted) {
          this.scheduleReconnect();
        }
      };
    },

    scheduleReconnect() {
      setStatus("reconnecting");
      const delay = Math.min(RECONNECT_MAX_MS, 250 * 2 ** this.attempts) * (0.75 + Math.random() / 2);
      this.attempts += 1;
      clearTimeout(this.retry);
      this.retry = setTimeout(() => this.open(), delay);
    },

    beat() {
      if (!this.isOpen()) return;
      if (Date.now() - this.lastRx > SILENT_LIMIT_MS) {
        this.drop();  // silent too long: a dead connection
        return;
      }
      this.send({ type: "ping" });
    },

    send(frame) {
      if (!this.isOpen()) return false;
      this.ws.send(JSON.stringify(frame));
      return true;
    },

    // Give up on the current socket (nothing more is read from it) and connect again.
    drop() {
      const ws = this.ws;
      if (!ws) return;
      this.ws = null;
      ws.close();
      if (this.wanted) this.scheduleReconnect();
    },
  };

  function onConnected() {
    for (const [runId, run] of state.runs) {
      if (run.final) continue;
      run.resumeFrom = -1;
      requestResume(runId, run);
      if (run.cancel) conn.send({ type: "cancel", run_id: runId });
    }
    for (const entry of state.outbox.values()) conn.send(entry.frame);
  }

  window.addEventListener("online", () => {
    if (conn.wanted && !conn.ws) conn.open();
  });

  // ---------------------------------------------------------------- events
  function handleEvent(event) {
    if (event.type === "pong") return;
    if (event.type === "error") {
      onError(event);
      return;
    }
    if (typeof event.run_id === "string" && typeof event.seq === "number") onRunEvent(event);
  }

  function requestResume(runId, run) {
    if (run.resumeFrom === run.lastSeq) return;  // already asked from here
    if (conn.send({ type: "resume", run_id: runId, after_seq: run.lastSeq })) {
      run.resumeFrom = run.lastSeq;
    }
  }

  function onRunEvent(event) {
    let run = state.runs.get(event.run_id);
    if (!run) {
      if (event.type !== "run.accepted") return;  // a run this page does not show
      run = adoptRun(event);
      if (!run) return;
    }
    if (event.seq <= run.lastSeq) return;  // seen already (replays overlap live events)
    if (event.seq > run.lastSeq + 1 && !FINAL.has(event.type)) {
      requestResume(event.run_id, run);  // a gap: replay from the last event applied
      return;
    }
    if (run.fromHistory) {  // the replay from seq 1 replaces the text history showed
      run.fromHistory = false;
      if (!FINAL.has(event.type)) run.msg.blocks = [];
    }
    run.lastSeq = event.seq;
    applyEvent(run, event);
    if (FINAL.has(event.type)) run.final = true;
    if (run.sessionId === state.current) {
      renderMessage(run.msg);
      updateComposer();
    } else {
      syncSessionBusy();
    }
  }

  function adoptRun(event) {
    const pending = event.client_msg_id ? state.outbox.get(event.client_msg_id) : undefined;
    let sessionId = event.session_id;
    let chat = state.chats.get(sessionId);
    const msg = { role: "assistant", runId: event.run_id, blocks: [], status: "waiting", agent: null };
    if (pending) {
      state.outbox.delete(event.client_msg_id);
      sessionId = pending.sessionId;
      chat = state.chats.get(sessionId);
      pending.userMsg.status = "sent";
      insertAfter(chat, pending.userMsg, msg);
      if (sessionId === state.current) renderMessage(pending.userMsg);
    } else if (chat && chat.loaded) {
      insertAfter(chat, null, msg);  // another tab or device of this user
    } else {
      return null;
    }
    const run = { sessionId, msg, lastSeq: 0, resumeFrom: -1, final: false, fromHistory: false, cancel: false };
    state.runs.set(event.run_id, run);
    return run;
  }

  function applyEvent(run, event) {
    const msg = run.msg;
    switch (event.type) {
      case "run.queued":
        msg.status = "queued";
        msg.position = event.position;
        break;
      case "run.started":
        msg.status = "streaming";
        msg.agent = event.agent || msg.agent;
        break;
      case "message.delta":
        msg.status = "streaming";
        appendText(msg, event.text);
        break;
      case "tool.called":
        msg.status = "streaming";
        msg.blocks.push({ kind: "tool", name: event.name, args: event.arguments, done: false });
        break;
      case "tool.output": {
        const call = msg.blocks.findLast((b) => b.kind === "tool" && b.name === event.name && !b.done);
        if (call) {
          call.done = true;
          call.output = event.output;
        } else {
          msg.blocks.push({ kind: "tool", name: event.name, done: true, output: event.output });
        }
        break;
      }
      case "agent.handoff":
        msg.blocks.push({ kind: "handoff", agent: event.agent });
        msg.agent = event.agent;
        break;
      case "run.completed":
      case "run.cancelled":
        setFinalText(msg, event.text || "");
        msg.status = event.type === "run.completed" ? "completed" : "cancelled";
        for (const b of msg.blocks) if (b.kind === "tool") b.done = true;
        break;
      case "run.failed":
        msg.status = "failed";
        msg.error = (event.error && event.error.message) || "the reply failed";
        break;
      default:
        break;
    }
  }

  function appendText(msg, text) {
    const last = msg.blocks[msg.blocks.length - 1];
    if (last && last.kind === "text") last.text += text;
    else msg.blocks.push({ kind: "text", text });
  }

  function messageText(msg) {
    return msg.blocks.filter((b) => b.kind === "text").map((b) => b.text).join("");
  }

  function setFinalText(msg, text) {
    if (messageText(msg) === text) return;
    msg.blocks = msg.blocks.filter((b) => b.kind !== "text");
    if (text) msg.blocks.push({ kind: "text", text });
  }

  function onError(event) {
    const pending = event.ref ? state.outbox.get(event.ref) : undefined;
    if (pending) {
      if (event.code === "rate_limited" || event.code === "unavailable") {
        const wait = Math.max(200, 1000 * (event.retry_after || 1));
        setTimeout(() => {
          if (state.outbox.get(event.ref) === pending) conn.send(pending.frame);
        }, wait);
        return;
      }
      state.outbox.delete(event.ref);
      pending.userMsg.status = "failed";
      pending.userMsg.error = event.code === "busy"
        ? "Not sent: a reply is still running."
        : "Not sent: " + event.message;
      if (pending.sessionId === state.current) {
        renderMessage(pending.userMsg);
        updateComposer();
      }
      return;
    }
    const run = event.ref ? state.runs.get(event.ref) : undefined;
    if (run && !run.final && (event.code === "unavailable" || event.code === "rate_limited")) {
      setTimeout(() => {  // a resume the server could not serve now: ask again
        run.resumeFrom = -1;
        if (!run.final) requestResume(event.ref, run);
      }, Math.max(200, 1000 * (event.retry_after || 1)));
      return;
    }
    if (run && event.code === "not_found" && !run.final) {
      run.final = true;
      run.msg.status = "failed";
      run.msg.error = "This reply can no longer be resumed.";
      if (run.sessionId === state.current) {
        renderMessage(run.msg);
        updateComposer();
      }
      return;
    }
    toast(event.message || event.code);
  }

  // ---------------------------------------------------------------- sessions
  function loadSessions() {
    state.sessions = storage.get(sessionsKey(), []);
    if (!Array.isArray(state.sessions)) state.sessions = [];
    if (!state.sessions.length) state.sessions.push({ id: "default", title: "", updated: Date.now() });
  }

  function saveSessions() {
    storage.set(sessionsKey(), state.sessions);
  }

  function touchSession(id, text) {
    let session = state.sessions.find((s) => s.id === id);
    if (!session) {
      session = { id, title: "", updated: Date.now() };
      state.sessions.push(session);
    }
    if (!session.title && text) session.title = text.trim().slice(0, 60);
    session.updated = Date.now();
    state.sessions.sort((a, b) => b.updated - a.updated);
    saveSessions();
    renderSessions();
  }

  function newSession() {
    const blank = state.sessions.find((s) => !s.title);
    if (blank) {
      openSession(blank.id);
      return;
    }
    const id = randomId("chat-");
    state.sessions.unshift({ id, title: "", updated: Date.now() });
    state.chats.set(id, { messages: [], loaded: true, loading: null });
    saveSessions();
    openSession(id);
  }

  function openSession(id) {
    state.current = id;
    storage.set(currentKey(), id);
    if (!state.sessions.some((s) => s.id === id)) touchSession(id, "");
    let chat = state.chats.get(id);
    if (!chat) {
      chat = { messages: [], loaded: false, loading: null };
      state.chats.set(id, chat);
    }
    renderSessions();
    renderChat();
    if (!chat.loaded && !chat.loading) {
      chat.loading = loadHistory(id, chat).finally(() => {
        chat.loading = null;
        if (state.current === id) renderChat();
      });
    }
    $("input").focus();
  }

  async function loadHistory(sessionId, chat) {
    let response;
    try {
      response = await fetch(
        `${BASE}/api/history?session_id=${encodeURIComponent(sessionId)}&limit=${HISTORY_LIMIT}`,
        { headers: { Authorization: "Bearer " + state.token } },
      );
    } catch (_) {
      toast("Could not load this chat's history. Retrying…");
      setTimeout(() => {
        if (state.current === sessionId && !chat.loaded) openSession(sessionId);
      }, 2000);
      return;
    }
    if (response.status === 401) {
      signOut("The server did not accept this token (expired, or signed with another secret).");
      return;
    }
    if (!response.ok) {
      toast("Could not load this chat's history (HTTP " + response.status + ").");
      return;
    }
    const body = await response.json();
    const messages = [];
    for (const row of body.messages || []) {
      if (row.role === "user") {
        messages.push({ role: "user", text: row.text, status: "sent" });
        continue;
      }
      const known = state.runs.get(row.run_id);
      if (known) {
        messages.push(known.msg);
        continue;
      }
      const msg = {
        role: "assistant",
        runId: row.run_id,
        blocks: row.text ? [{ kind: "text", text: row.text }] : [],
        status: row.status,
        agent: null,
      };
      messages.push(msg);
      if (row.status === "streaming") {  // in flight: replay it from the start, then live
        state.runs.set(row.run_id, {
          sessionId, msg, lastSeq: 0, resumeFrom: -1, final: false, fromHistory: true, cancel: false,
        });
      }
    }
    chat.messages = messages;
    chat.loaded = true;
    const first = messages.find((m) => m.role === "user");
    if (first) {
      const session = state.sessions.find((s) => s.id === sessionId);
      if (session && !session.title) {
        session.title = first.text.trim().slice(0, 60);
        saveSessions();
        renderSessions();
      }
    }
    for (const [runId, run] of state.runs) {
      if (run.sessionId === sessionId && run.fromHistory) requestResume(runId, run);
    }
  }

  function insertAfter(chat, after, msg) {
    const index = after ? chat.messages.indexOf(after) : -1;
    let at = index < 0 ? chat.messages.length : index + 1;
    // after its own user message, past replies already shown for earlier messages
    while (index >= 0 && at < chat.messages.length && chat.messages[at].role === "assistant") at += 1;
    chat.messages.splice(at, 0, msg);
    if (chat !== state.chats.get(state.current)) return;
    const next = chat.messages[at + 1];
    const node = renderMessage(msg);
    if (next && next.el) $("messages").insertBefore(node, next.el);
  }

  // ---------------------------------------------------------------- actions
  function sendChat(text) {
    const chat = state.chats.get(state.current);
    if (!chat || !chat.loaded) return;
    const id = randomId("m-");
    const userMsg = { role: "user", text, status: "sending" };
    chat.messages.push(userMsg);
    hideEmpty();
    renderMessage(userMsg);
    const frame = { type: "chat", text, session_id: state.current, client_msg_id: id, on_busy: state.onBusy };
    state.outbox.set(id, { frame, userMsg, sessionId: state.current });
    conn.send(frame);  // or, while reconnecting, once the socket is open again
    touchSession(state.current, text);
    renderTitle();
    updateComposer();
    scrollToEnd(true);
  }

  function stopRuns() {
    for (const [runId, run] of state.runs) {
      if (run.sessionId !== state.current || run.final) continue;
      run.cancel = true;
      conn.send({ type: "cancel", run_id: runId });  // or after the reconnect (onConnected)
    }
    updateComposer();
  }

  // ---------------------------------------------------------------- rendering
  function setStatus(kind) {
    const labels = {
      connected: "Connected",
      connecting: "Connecting…",
      reconnecting: "Reconnecting…",
      offline: "Offline",
    };
    $("status").dataset.state = kind;
    $("status-label").textContent = labels[kind] || kind;
  }

  function relativeTime(ms) {
    const seconds = Math.max(0, (Date.now() - ms) / 1000);
    if (seconds < 60) return "now";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m";
    if (seconds < 86400) return Math.floor(seconds / 3600) + "h";
    return Math.floor(seconds / 86400) + "d";
  }

  function sessionBusy(id) {
    for (const run of state.runs.values()) if (run.sessionId === id && !run.final) return true;
    return false;
  }

  let renderedBusy = "";
  function renderSessions() {
    renderedBusy = busySessions();
    const nav = $("sessions");
    nav.replaceChildren();
    for (const session of state.sessions) {
      const item = el("button", "session" + (session.id === state.current ? " active" : ""));
      item.type = "button";
      item.dataset.sessionId = session.id;
      item.append(el("span", "session-title", session.title || "New chat"));
      const meta = el("span", "session-meta", relativeTime(session.updated));
      if (sessionBusy(session.id)) meta.prepend(el("span", "session-busy"));
      item.append(meta);
      item.addEventListener("click", () => openSession(session.id));
      nav.append(item);
    }
  }

  function renderTitle() {
    const session = state.sessions.find((s) => s.id === state.current);
    $("session-title").textContent = (session && session.title) || "New chat";
  }

  function renderChat() {
    renderTitle();
    const box = $("messages");
    box.replaceChildren();
    const chat = state.chats.get(state.current);
    if (!chat.loaded) {
      box.append(el("div", "loading", "Loading conversation…"));
    } else if (!chat.messages.length) {
      box.append(emptyState());
    } else {
      for (const msg of chat.messages) {
        msg.el = null;
        box.append(renderMessage(msg));
      }
    }
    updateComposer();
    scrollToEnd(true);
  }

  function emptyState() {
    const wrap = el("div", "empty");
    wrap.id = "empty";
    wrap.append(el("div", "empty-logo"));
    wrap.append(el("h2", "", "How can I help?"));
    wrap.append(el("p", "", "Ask anything. Your assistant can keep todos and remember what you prefer."));
    const list = el("div", "suggestions");
    for (const text of SUGGESTIONS) {
      const chip = el("button", "suggestion", text);
      chip.type = "button";
      chip.addEventListener("click", () => sendChat(text));
      list.append(chip);
    }
    wrap.append(list);
    return wrap;
  }

  function hideEmpty() {
    const empty = $("empty");
    if (empty) empty.remove();
  }

  function compact(value) {
    if (value === undefined || value === null) return "";
    if (typeof value === "string") return value;
    if (typeof value === "object" && !Array.isArray(value)) {
      return Object.entries(value).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ");
    }
    return JSON.stringify(value);
  }

  function arrowIcon() {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("class", "handoff-icon");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", "M4 12h15M13 6l6 6-6 6");
    svg.append(path);
    return svg;
  }

  function toolChip(block) {
    const chip = el("details", "chip tool");
    chip.dataset.tool = block.name;
    chip.dataset.state = block.done ? "done" : "running";
    const summary = el("summary");
    summary.append(el("span", "chip-icon " + (block.done ? "ok" : "spin")));
    summary.append(el("span", "chip-name", block.name));
    const args = compact(block.args);
    if (args) summary.append(el("span", "chip-args", args));
    chip.append(summary);
    if (block.done) {
      const out = el("pre", "chip-output");
      out.textContent = typeof block.output === "string" ? block.output : JSON.stringify(block.output, null, 2);
      chip.append(out);
    }
    return chip;
  }

  function renderMessage(msg) {
    const isNew = !msg.el;
    const stick = isNearEnd();
    if (isNew) msg.el = el("div", "msg " + msg.role);
    const node = msg.el;
    node.replaceChildren();
    node.dataset.status = msg.status;
    if (msg.role === "user") {
      const bubble = el("div", "bubble");
      bubble.append(el("div", "text", msg.text));
      node.append(bubble);
      if (msg.status === "failed") node.append(el("div", "msg-note error", msg.error));
      else if (msg.status === "sending") node.append(el("div", "msg-note", "Sending…"));
    } else {
      if (msg.runId) node.dataset.runId = msg.runId;
      node.append(el("div", "avatar bot"));
      const body = el("div", "msg-body");
      body.append(el("div", "msg-author", agentLabel(msg.agent)));
      const bubble = el("div", "bubble");
      let text = null;
      for (const block of msg.blocks) {
        if (block.kind === "tool") bubble.append(toolChip(block));
        else if (block.kind === "handoff") {
          const chip = el("div", "chip handoff");
          chip.append(arrowIcon());
          chip.append(el("span", "", "Handed off to " + agentLabel(block.agent)));
          bubble.append(chip);
        } else {
          text = el("div", "text", block.text);
          bubble.append(text);
        }
      }
      const active = ACTIVE.has(msg.status);
      if (active && !text) {
        const typing = el("div", "typing");
        typing.append(el("span"), el("span"), el("span"));
        bubble.append(typing);
      } else if (active && text && msg.blocks[msg.blocks.length - 1].kind === "text") {
        text.classList.add("streaming");
      }
      body.append(bubble);
      const note = statusNote(msg);
      if (note) body.append(note);
      node.append(body);
    }
    if (isNew && node.parentNode === null && msg === lastOfCurrent()) $("messages").append(node);
    if (stick) scrollToEnd(false);
    return node;
  }

  function lastOfCurrent() {
    const chat = state.chats.get(state.current);
    return chat && chat.messages[chat.messages.length - 1];
  }

  function agentLabel(agent) {
    if (!agent) return "Assistant";
    return agent.charAt(0).toUpperCase() + agent.slice(1);
  }

  function statusNote(msg) {
    if (msg.status === "queued") {
      return el("div", "msg-note", `Queued${msg.position ? " (#" + msg.position + ")" : ""}: waiting for the reply before it`);
    }
    if (msg.status === "cancelled") return el("div", "msg-note stopped", "Stopped");
    if (msg.status === "failed") return el("div", "msg-note error", msg.error || "The reply failed");
    return null;
  }

  function updateComposer() {
    const chat = state.chats.get(state.current);
    const busy = sessionBusy(state.current) ||
      [...state.outbox.values()].some((p) => p.sessionId === state.current);
    const stop = $("stop");
    stop.hidden = !busy;
    stop.disabled = [...state.runs.values()].some((r) => r.sessionId === state.current && !r.final && r.cancel);
    $("send").disabled = !chat || !chat.loaded;
    const activity = $("activity");
    const streaming = busy && chat && chat.messages.some((m) => m.role === "assistant" && m.status === "streaming");
    activity.hidden = !busy;
    activity.textContent = streaming ? "Assistant is replying…" : "Waiting for the assistant…";
    syncSessionBusy();
  }

  function busySessions() {
    return state.sessions.filter((s) => sessionBusy(s.id)).map((s) => s.id).join(" ");
  }

  function syncSessionBusy() {
    if (busySessions() !== renderedBusy) renderSessions();  // not on every delta: keeps clicks working
  }

  function isNearEnd() {
    const box = $("messages");
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToEnd(force) {
    const box = $("messages");
    if (force || isNearEnd()) box.scrollTop = box.scrollHeight;
  }

  let toastTimer = null;
  function toast(text) {
    const node = $("toast");
    node.textContent = text;
    node.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { node.hidden = true; }, 5000);
  }

  // ---------------------------------------------------------------- sign-in
  async function showSignIn(error) {
    $("app").hidden = true;
    $("signin").hidden = false;
    const message = $("signin-error");
    message.hidden = !error;
    message.textContent = error || "";
    $("token-input").value = "";
    try {
      const response = await fetch(`${BASE}/api/dev-token`);
      const body = response.ok ? await response.json() : {};
      $("dev-section").hidden = !body.available;
    } catch (_) {
      $("dev-section").hidden = true;
    }
  }

  function startApp(token) {
    state.token = token;
    state.user = tokenUser(token);
    storage.set("raychat.token", token);
    $("signin").hidden = true;
    $("app").hidden = false;
    $("user-name").textContent = state.user;
    $("avatar").textContent = state.user.charAt(0).toUpperCase();
    loadSessions();
    const current = storage.get(currentKey(), null);
    conn.connects = 0;
    conn.start();
    openSession(state.sessions.some((s) => s.id === current) ? current : state.sessions[0].id);
  }

  function signOut(error) {
    conn.stop();
    storage.remove("raychat.token");
    state.token = null;
    state.chats.clear();
    state.runs.clear();
    state.outbox.clear();
    showSignIn(error);
  }

  async function devSignIn(userId) {
    const response = await fetch(`${BASE}/api/dev-token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: userId }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok && body.token) {
      startApp(body.token);
      return;
    }
    const detail = typeof body.detail === "string" ? body.detail
      : "Use 1-128 letters, digits or _ . @ - for the name.";
    showSignIn(detail);
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token-input").value.trim();
      if (token) startApp(token);
    });
    $("dev-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("dev-user").value.trim();
      if (name) devSignIn(name).catch(() => showSignIn("Could not reach the server."));
    });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("input");
      const text = input.value.trim();
      if (!text || $("send").disabled) return;  // the chat's history is still loading
      input.value = "";
      autosize();
      sendChat(text);
    });
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("input").addEventListener("input", autosize);
    $("stop").addEventListener("click", stopRuns);
    $("new-chat").addEventListener("click", newSession);
    $("sign-out").addEventListener("click", () => signOut(""));
    const onBusy = $("on-busy");
    onBusy.value = state.onBusy;
    onBusy.addEventListener("change", () => {
      state.onBusy = onBusy.value;
      storage.set("raychat.onBusy", state.onBusy);
    });
    setInterval(renderSessions, 60000);  // keeps "5m" labels current
  }

  function autosize() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 200) + "px";
  }

  // A small hook for tests and curious developers.
  window.raychat = {
    dropSocket: () => conn.drop(),
    connects: () => conn.connects,
    connected: () => conn.isOpen(),
  };

  wire();
  const saved = storage.get("raychat.token", null);
  if (saved) startApp(saved);
  else showSignIn("");
})();
