/*
 * wagate dashboard: plain JavaScript, no framework, no build step, nothing from the
 * internet. Everything it shows comes from POST /graphql with the operator's token
 * (kept in this tab's session storage). Data is only ever put into the page as text
 * (textContent, attributes), never as HTML.
 */
"use strict";

(function () {
  const TOKEN_KEY = "wagate.token";
  const ADDED_KEY = "wagate.addedSessions";
  const FAST_POLL_MS = 1000; // while a session is pairing or connecting
  const SLOW_POLL_MS = 3000;
  const OVERVIEW_POLL_MS = 5000; // queue, usage, recent and incoming messages
  const SLOW_PANELS_MS = 30000; // the chart and the webhooks: they change slowly
  const PAGE_SIZE = 20;
  const SESSION_NAME = /^[A-Za-z0-9_-]{1,64}$/;

  // What a state means, what to do and its tone come with each status (its hint field,
  // from the gateway's one table of session states); this page keeps no copy.
  const UNKNOWN_HINT = { tone: "idle", label: "Unknown", meaning: "", whatToDo: "" };
  const BUSY_STATES = new Set(["CONNECTING", "QR_PENDING", "RECONNECTING"]);
  const CONNECT_STATES = new Set(["NEW", "LOGGED_OUT", "DISCONNECTED", "FAILED", "REPLACED",
    "BANNED", "CLIENT_OUTDATED", "RECONNECTING"]);
  const DISCONNECT_STATES = new Set(["CONNECTED", "CONNECTING", "QR_PENDING", "RECONNECTING"]);
  const LOGOUT_STATES = new Set(["CONNECTED", "CONNECTING", "RECONNECTING", "DISCONNECTED",
    "FAILED"]);
  // Not running: a session in one of these states that has no linked device can be
  // removed from the list (whatsAppForgetSession; the gateway refuses any other).
  const FORGET_STATES = new Set(["NEW", "LOGGED_OUT", "QR_EXPIRED", "DISCONNECTED", "FAILED",
    "REPLACED", "BANNED", "CLIENT_OUTDATED"]);
  // What a role that lacks an action cannot do here, for the note under the header.
  const MISSING = {
    connect: "link, unlink or remove sessions",
    messages: "see message records or incoming messages",
    send: "send messages or check numbers",
    admin: "see or manage webhooks",
  };

  const STATUS_FIELDS = "session state connected phoneNumber reconnectAttempt " +
    "lastError { code message } connectedSince qrCodeSvg qrCodeRaw qrExpiresAt bannedUntil " +
    "hint { label meaning whatToDo tone }";
  const Q_SESSIONS = `query Sessions { whatsAppSessions { ${STATUS_FIELDS} } }`;
  const Q_STATUS = `query Status($session: String) {
    whatsAppStatus(session: $session) { ${STATUS_FIELDS} } }`;
  const Q_WHO = `query Who { whatsAppGateway { version authRequired
    principal { name role sessions actions } } }`;
  const Q_OVERVIEW = `query Overview { whatsAppGateway {
    queueDepth queueBySession { session depth } dailyUsage { used limit remaining }
    limits { perNumberPerMinute perNumberPerHour globalPerDay maxSessions reconnectAttempts
             maxMessageLength } } }`;
  const Q_MESSAGES = `query Messages($session: String, $state: String, $first: Int,
      $after: String) {
    whatsAppMessages(session: $session, state: $state, first: $first, after: $after) {
      edges { node { id state session phoneNumber acceptedAt updatedAt attempts reason error
                     uncertain media { kind mimeType size } } }
      pageInfo { hasNextPage endCursor } } }`;
  const Q_CHART = `query Chart { whatsAppMessageChart(hours: 24) {
    start sent delivered read failed } }`;
  const Q_INCOMING = `query Incoming($session: String, $after: String, $first: Int) {
    whatsAppIncomingMessages(session: $session, after: $after, first: $first) {
      edges { node { id session kind text phoneNumber senderJid pushName quotedMessageId
                     receivedAt media { id kind mimeType size fileName url } } }
      pageInfo { hasNextPage endCursor } } }`;
  const Q_OUTGOING = `query Outgoing($session: String, $phone: String) {
    whatsAppMessages(session: $session, phoneNumber: $phone, first: 20) {
      edges { node { id state acceptedAt whatsAppMessageId } } } }`;
  const WEBHOOK_FIELDS = "id url origin enabled disabledReason cursor failures lastStatus " +
    "lastError lastDeliveryAt";
  const Q_WEBHOOKS = `query Webhooks { webhooks { ${WEBHOOK_FIELDS} } }`;
  const M_WEBHOOK_TEST = `mutation WebhookTest($id: ID!) {
    sendTestWebhook(id: $id) { delivered status error } }`;
  const M_WEBHOOK_REPLAY = `mutation WebhookReplay($id: ID!, $after: Int, $since: String) {
    replayWebhooks(id: $id, after: $after, since: $since) { ${WEBHOOK_FIELDS} } }`;
  const M_WEBHOOK_ENABLE = `mutation WebhookEnable($id: ID!, $enabled: Boolean) {
    updateWebhook(id: $id, enabled: $enabled) { ${WEBHOOK_FIELDS} } }`;
  const CHART_STATES = ["SENT", "DELIVERED", "READ", "FAILED"];
  const INCOMING_KEPT = 500; // the newest incoming messages the page holds
  const INCOMING_PAGES = 10; // pages of 200 read per refresh (the first one catches up)
  const M_CONNECT = "mutation Connect($session: String) { whatsAppConnect(session: $session) }";
  const M_DISCONNECT = `mutation Disconnect($session: String, $keep: Boolean) {
    whatsAppDisconnect(session: $session, keepSession: $keep) }`;
  const M_FORGET = "mutation Forget($session: String!) { whatsAppForgetSession(session: $session) }";
  const M_PAIRING = `mutation PairingCode($phone: String!, $session: String) {
    whatsAppRequestPairingCode(phoneNumber: $phone, session: $session) }`;
  const M_SEND = `mutation Send($input: SendWhatsAppMessageInput!) {
    sendWhatsAppMessage(input: $input) { id state } }`;
  const M_SEND_MEDIA = `mutation SendMedia($input: SendWhatsAppMediaInput!) {
    sendWhatsAppMedia(input: $input) { id state media { kind mimeType size } } }`;
  const CAPTIONED = new Set(["IMAGE", "VIDEO", "DOCUMENT"]);
  const PREVIEW_MAX_BYTES = 5 * 1024 * 1024;
  const M_TEST = `mutation Test($phone: String!, $session: String) {
    testWhatsAppConnection(phoneNumber: $phone, session: $session) }`;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    gateway: null, // {version, authRequired, principal}
    limits: null,
    sessions: new Map(), // name -> last status
    cards: new Map(), // name -> card view
    added: loadAdded(),
    clockOffsetMs: 0, // server time minus browser time, from the Date header
    pollTimer: 0,
    overviewTimer: 0,
    messagesShown: PAGE_SIZE,
    messagesCursor: null,
    slowTimer: 0,
    incoming: [], // the newest incoming messages, oldest first
    incomingCursors: new Map(), // session ("" for all) -> endCursor
    conversation: null, // the open conversation's key
    outgoing: null, // the messages sent to its number, as last asked for
    slowAt: 0, // when the chart and the webhooks were last asked for (ms)
    webhookViews: new Map(), // id -> webhook card view
    running: false,
  };

  // ---- the API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(code, message, status) {
      super(message);
      this.code = code;
      this.status = status || 0;
    }
    get text() {
      return this.code ? `${this.message} (${this.code})` : this.message;
    }
  }

  async function gql(query, variables, file) {
    // With a file: a GraphQL multipart request (the file goes in variables.input.file).
    const headers = { Accept: "application/json" };
    if (!file) headers["Content-Type"] = "application/json";
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const operation = JSON.stringify({ query, variables: variables || {},
      operationName: operationName(query) });
    let payload = operation;
    if (file) {
      payload = new FormData();
      payload.append("operations", operation);
      payload.append("map", JSON.stringify({ 0: ["variables.input.file"] }));
      payload.append("0", file, file.name);
    }
    let response;
    try {
      response = await fetch("/graphql", {
        method: "POST", headers, cache: "no-store", credentials: "omit", body: payload,
      });
    } catch (err) {
      throw new ApiError("UNREACHABLE", "the gateway does not answer; check that " +
        "`wagate serve` is running, then reload this page");
    }
    noteServerClock(response);
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      throw new ApiError(`HTTP_${response.status}`, `the gateway answered HTTP ` +
        `${response.status} without a GraphQL body`, response.status);
    }
    const errors = (body && body.errors) || [];
    if (errors.length) {
      const first = errors[0];
      const code = (first.extensions && first.extensions.code) || "";
      const error = new ApiError(code, first.message || "request failed", response.status);
      if (response.status === 401 || code === "UNAUTHENTICATED") signedOut(error);
      throw error;
    }
    return body.data;
  }

  function operationName(query) {
    const match = /^\s*(?:query|mutation)\s+([A-Za-z_]\w*)/.exec(query);
    return match ? match[1] : null; // named in the gateway's request log
  }

  function noteServerClock(response) {
    const date = Date.parse(response.headers.get("Date") || "");
    // The Date header has whole seconds: keep the browser's clock unless it is off by more.
    if (!Number.isNaN(date)) {
      const offset = date - Date.now();
      state.clockOffsetMs = Math.abs(offset) > 1500 ? offset : 0;
    }
  }

  function serverNow() {
    return Date.now() + state.clockOffsetMs;
  }

  // ---- sign in -------------------------------------------------------------------------

  async function start() {
    bindStatic();
    setInterval(tick, 1000);
    await signIn(state.token, false);
  }

  async function signIn(token, fromForm) {
    state.token = token;
    let data;
    try {
      data = await gql(Q_WHO);
    } catch (err) {
      if (err.code === "UNAUTHENTICATED") {
        showLogin(fromForm || token ? err.text : "");
      } else {
        showLogin("");
        showNotice(err.text);
      }
      return;
    }
    hideNotice();
    state.gateway = data.whatsAppGateway;
    if (state.gateway.authRequired && token) sessionStorage.setItem(TOKEN_KEY, token);
    showApp();
  }

  function signedOut(error) {
    if (!state.running && $("login").hidden === false) return; // already asking
    stopPolling();
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = "";
    showLogin(error ? error.text : "");
  }

  function showLogin(message) {
    stopPolling();
    loadTokenCommand();
    $("app").hidden = true;
    $("who").hidden = true;
    $("demo-banner").hidden = true;
    $("role-note").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").value = "";
    $("token").focus();
  }

  // The token command for the config this gateway runs with (the gateway fills in its
  // config file where it tells that to this browser; otherwise a placeholder stays).
  async function loadTokenCommand() {
    try {
      const response = await fetch("/static/sign-in.json", { credentials: "omit" });
      if (!response.ok) return;
      const hint = await response.json();
      $("token-command").textContent = hint.command;
      $("token-command-note").textContent = hint.note;
    } catch (err) {
      // Keep the placeholder command: the page works without the hint.
    }
  }

  function may(action) {
    const principal = state.gateway && state.gateway.principal;
    return Boolean(principal && principal.actions.includes(action));
  }

  // Only the controls the token's role can use are shown; a note says what is hidden
  // and which role can do it, instead of buttons that end in FORBIDDEN.
  function applyRole() {
    $("send-section").hidden = !may("send");
    $("check-section").hidden = !may("send");
    $("messages-section").hidden = !may("messages");
    $("incoming-section").hidden = !may("messages");
    $("chart-section").hidden = !may("events");
    $("webhooks-section").hidden = !may("admin");
    $("add-session-form").hidden = !may("connect");
    const missing = Object.keys(MISSING).filter((a) => !may(a)).map((a) => MISSING[a]);
    const note = $("role-note");
    note.hidden = missing.length === 0;
    note.textContent = missing.length === 0 ? "" : `Role ${state.gateway.principal.role}: ` +
      `this token cannot ${missing.join(", nor ")}, so those controls are hidden. A token ` +
      "with role admin can do everything; sending needs admin or sender, linking sessions " +
      "admin or operator (Forget token shows the command that creates one).";
  }

  function showApp() {
    const gw = state.gateway;
    $("login").hidden = true;
    $("app").hidden = false;
    $("version").textContent = `version ${gw.version}`;
    $("demo-banner").hidden = gw.authRequired;
    $("who").hidden = false;
    $("who-name").textContent = gw.principal.name;
    $("who-role").textContent = `role ${gw.principal.role}`;
    $("who-sessions").textContent = gw.principal.sessions
      ? `; sessions ${gw.principal.sessions.join(", ")}` : "";
    $("sign-out").hidden = !gw.authRequired;
    applyRole();
    // Another token may see other sessions: what the last one read is not kept.
    state.incoming = [];
    state.incomingCursors.clear();
    closeConversation();
    state.running = true;
    refreshSessions();
    refreshOverview();
    refreshSlowPanels();
  }

  // ---- polling -------------------------------------------------------------------------

  function stopPolling() {
    state.running = false;
    clearTimeout(state.pollTimer);
    clearTimeout(state.overviewTimer);
    clearTimeout(state.slowTimer);
  }

  function visibleExtraNames() {
    const principal = state.gateway.principal;
    const names = new Set(state.added);
    if (principal.sessions) principal.sessions.forEach((n) => names.add(n));
    else names.add("default");
    return [...names].filter((n) => !principal.sessions || principal.sessions.includes(n));
  }

  async function refreshSessions() {
    clearTimeout(state.pollTimer);
    if (!state.running) return;
    let busy = false;
    try {
      const data = await gql(Q_SESSIONS);
      const statuses = data.whatsAppSessions;
      statuses.forEach((s) => { s.registered = true; }); // the gateway knows it: forgettable
      const known = new Set(statuses.map((s) => s.session));
      // Sessions the registry does not hold yet (never connected, or connected a moment
      // ago): ask for them by name, so they can be connected from here.
      for (const name of visibleExtraNames()) {
        if (known.has(name)) continue;
        const one = await gql(Q_STATUS, { session: name });
        statuses.push(one.whatsAppStatus);
      }
      $("sessions-error").textContent = "";
      hideNotice();
      renderSessions(statuses);
      busy = statuses.some((s) => BUSY_STATES.has(s.state));
    } catch (err) {
      if (err.code === "UNAUTHENTICATED") return;
      if (err.code === "UNREACHABLE") showNotice(err.text);
      else $("sessions-error").textContent = err.text;
    }
    if (state.running) {
      state.pollTimer = setTimeout(refreshSessions, busy ? FAST_POLL_MS : SLOW_POLL_MS);
    }
  }

  async function refreshOverview() {
    clearTimeout(state.overviewTimer);
    if (!state.running) return;
    await Promise.all([loadOverview(), may("messages") ? loadMessages(false) : null,
      may("messages") ? loadIncoming() : null]);
    if (state.running) state.overviewTimer = setTimeout(refreshOverview, OVERVIEW_POLL_MS);
  }

  async function refreshSlowPanels() {
    clearTimeout(state.slowTimer);
    if (!state.running) return;
    state.slowAt = Date.now();
    await Promise.all([may("events") ? loadChart() : null,
      may("admin") ? loadWebhooks() : null]);
    if (state.running) state.slowTimer = setTimeout(refreshSlowPanels, SLOW_PANELS_MS);
  }

  async function loadOverview() {
    try {
      const gw = (await gql(Q_OVERVIEW)).whatsAppGateway;
      state.limits = gw.limits;
      $("queue-depth").textContent = String(gw.queueDepth);
      $("queue-by-session").textContent = gw.queueBySession
        .map((q) => `${q.session}: ${q.depth}`).join(", ");
      const usage = gw.dailyUsage; // null: the token sees only some sessions
      const meter = $("usage-meter");
      meter.hidden = !usage;
      if (usage) {
        $("usage-text").textContent =
          `${usage.used} of ${usage.limit} (${usage.remaining} left); the limit counts ` +
          "every session together";
        meter.max = usage.limit;
        meter.low = usage.limit * 0.7;
        meter.high = usage.limit * 0.9;
        meter.value = usage.used;
      } else {
        $("usage-text").textContent =
          "not shown: it counts every session's messages, and this token may see only some";
      }
      const l = gw.limits;
      $("limits-text").textContent =
        `per recipient ${l.perNumberPerMinute}/minute and ${l.perNumberPerHour}/hour; ` +
        `${l.globalPerDay}/day in all; up to ${l.maxSessions} sessions`;
      updateCount();
      $("overview-error").textContent = "";
    } catch (err) {
      if (err.code !== "UNAUTHENTICATED") $("overview-error").textContent = err.text;
    }
  }

  // ---- sessions ------------------------------------------------------------------------

  function renderSessions(statuses) {
    statuses.sort((a, b) => a.session.localeCompare(b.session));
    const container = $("sessions");
    const seen = new Set();
    for (const status of statuses) {
      seen.add(status.session);
      state.sessions.set(status.session, status);
      let card = state.cards.get(status.session);
      if (!card) {
        card = makeCard(status.session);
        state.cards.set(status.session, card);
      }
      container.appendChild(card.root); // keeps the sorted order; moving keeps focus state
      updateCard(card, status);
    }
    for (const [name, card] of state.cards) {
      if (!seen.has(name)) {
        card.root.remove();
        state.cards.delete(name);
        state.sessions.delete(name);
      }
    }
    updateSessionSelects([...seen]);
  }

  function updateSessionSelects(names) {
    for (const [id, blank] of [["send-session", null], ["messages-session", "All sessions"]]) {
      const select = $(id);
      const current = select.value;
      const wanted = blank === null ? names : ["", ...names];
      const have = [...select.options].map((o) => o.value);
      if (have.join("\n") === wanted.join("\n")) continue;
      select.replaceChildren(...wanted.map((name) => {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name === "" ? blank : name;
        return option;
      }));
      if (wanted.includes(current)) select.value = current;
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function makeCard(name) {
    const id = `session-${name}`;
    const c = { name, status: null, qrRaw: null };
    c.title = el("h3", { id: `${id}-title` }, name);
    c.badge = el("span", { class: "badge", "data-testid": "state" });
    c.meaning = el("p", { class: "meaning" });
    c.todo = el("p", { class: "todo" });
    c.phone = el("dd", { "data-testid": "phone" });
    c.uptime = el("dd", { "data-testid": "uptime" });
    c.attempt = el("dd", { "data-testid": "attempt" });
    c.error = el("dd", { "data-testid": "last-error" });
    const facts = el("dl", { class: "facts" },
      el("div", {}, el("dt", { text: "Phone number" }), c.phone),
      el("div", {}, el("dt", { text: "Connected for" }), c.uptime),
      el("div", {}, el("dt", { text: "Reconnect attempt" }), c.attempt),
      // The whole width: an error is a sentence, squeezed into a column it is a tower.
      el("div", { class: "wide" }, el("dt", { text: "Last error" }), c.error));

    // Pairing: the QR code, its countdown, and the phone-number alternative.
    c.qr = el("img", { class: "qr", alt: `QR code that links a phone to session ${name}`,
      width: "280", height: "280", "data-testid": "qr" });
    c.countdown = el("p", { class: "countdown", "data-testid": "countdown" });
    const phoneId = `${id}-pair-phone`;
    c.pairPhone = el("input", { id: phoneId, type: "tel", autocomplete: "off",
      placeholder: "e.g. +49 151 23456789", required: "" });
    c.pairButton = el("button", { type: "submit" }, "Get pairing code");
    c.pairCode = el("output", { class: "pairing-code", for: phoneId,
      "aria-live": "polite", "data-testid": "pairing-code" });
    c.pairError = el("p", { class: "error", role: "alert" });
    c.pairForm = el("form", { class: "pair-form", novalidate: "" },
      el("label", { for: phoneId, text: "The phone's own number, with country code" }),
      el("div", { class: "row" }, c.pairPhone, c.pairButton),
      c.pairCode, c.pairError);
    c.pairForm.addEventListener("submit", (event) => {
      event.preventDefault();
      requestPairingCode(c);
    });
    const pairDetails = c.pairDetails = el("details", { class: "pair-by-phone" },
      el("summary", { text: "No camera? Link with a phone number instead" }), c.pairForm);
    c.pairing = el("div", { class: "pairing", "data-testid": "pairing" },
      c.qr, c.countdown,
      el("p", { class: "hint", text: "Scan with WhatsApp on the phone: Settings > Linked " +
        "devices > Link a device. Keep this page open: the code renews itself." }),
      pairDetails);

    c.connect = el("button", { type: "button", "aria-label": `Connect ${name}` }, "Connect");
    c.newCode = el("button", { type: "button", "aria-label": `New code for ${name}` },
      "New code");
    c.disconnect = el("button", { type: "button", class: "secondary",
      "aria-label": `Disconnect ${name}` }, "Disconnect");
    c.logout = el("button", { type: "button", class: "danger",
      "aria-label": `Log out ${name}` }, "Log out");
    c.forget = el("button", { type: "button", class: "secondary",
      "aria-label": `Remove ${name}` }, "Remove");
    c.connect.addEventListener("click", () => connect(c));
    c.newCode.addEventListener("click", () => connect(c));
    c.disconnect.addEventListener("click", () => confirmThen(
      `Disconnect ${name}?`,
      `The session goes offline but keeps its credentials: Connect resumes it without a ` +
      "QR code. Until then every send through it is refused with NOT_CONNECTED (nothing " +
      "is queued for it): send through another session, or retry after Connect.",
      "Disconnect", () => disconnect(c, true)));
    c.logout.addEventListener("click", () => confirmThen(
      `Log out ${name}?`,
      "This unlinks the device from the phone and deletes its credentials. Messages " +
      "still waiting to be sent through it fail (SESSION_LOGGED_OUT), and sends are " +
      "refused (NOT_CONNECTED) until a phone scans a new QR code.",
      "Log out", () => disconnect(c, false)));
    c.forget.addEventListener("click", () => confirmThen(
      `Remove ${name}?`,
      "The gateway forgets this session: its name, state and what is left of it on disk. " +
      "Messages still waiting for it fail (SESSION_FORGOTTEN). Connecting the same name " +
      "later starts a new session that needs a QR scan.",
      "Remove", () => forget(c)));
    c.actionError = el("p", { class: "error", role: "alert", "data-testid": "action-error" });

    c.root = el("article", { class: "session", id, "aria-labelledby": `${id}-title`,
      "data-session": name },
      el("header", { class: "session-head" }, c.title, c.badge),
      c.meaning, c.todo, facts, c.pairing,
      el("div", { class: "row actions" }, c.connect, c.newCode, c.disconnect, c.logout,
        c.forget),
      c.actionError);
    return c;
  }

  function updateCard(c, status) {
    const hint = status.hint || UNKNOWN_HINT;
    c.status = status;
    c.root.dataset.state = status.state;
    c.root.className = `session tone-${hint.tone}`;
    c.badge.textContent = `${hint.label} · ${status.state}`;
    c.meaning.textContent = hint.meaning +
      (status.bannedUntil ? ` The ban ends ${formatTime(status.bannedUntil)}.` : "");
    const todo = hint.whatToDo;
    // A button this token does not have: say who can press it.
    const pressNeedsOther = /\bPress\b/.test(todo || "") && !may("connect");
    c.todo.textContent = !todo ? "" : `What to do: ${todo}` +
      (pressNeedsOther ? " (with a token of role admin or operator)" : "");
    c.phone.textContent = status.phoneNumber || "not linked yet";
    const max = state.limits ? ` of ${state.limits.reconnectAttempts}` : "";
    c.attempt.textContent = status.reconnectAttempt ? `${status.reconnectAttempt}${max}` : "none";
    c.error.textContent = status.lastError
      ? `${status.lastError.message} (${status.lastError.code})` : "none";

    const pairing = status.state === "QR_PENDING" && status.qrCodeSvg;
    c.pairing.hidden = !pairing;
    if (pairing && status.qrCodeRaw !== c.qrRaw) {
      c.qrRaw = status.qrCodeRaw;
      c.qr.src = status.qrCodeSvg; // a data: URL (the page's CSP allows only those)
    }
    if (!pairing) {
      c.qrRaw = null;
      c.qr.removeAttribute("src");
      c.pairCode.textContent = "";
      c.pairError.textContent = "";
    }
    const acts = may("connect");
    const linked = Boolean(status.phoneNumber); // never linked: nothing to log out
    c.connect.hidden = !acts || !CONNECT_STATES.has(status.state);
    c.connect.textContent = status.state === "RECONNECTING" ? "Reconnect now" : "Connect";
    c.newCode.hidden = !acts || status.state !== "QR_EXPIRED";
    c.disconnect.hidden = !acts || !DISCONNECT_STATES.has(status.state);
    c.logout.hidden = !acts || !linked || !LOGOUT_STATES.has(status.state);
    c.forget.hidden = !acts || linked || !status.registered || !FORGET_STATES.has(status.state);
    c.pairDetails.hidden = !acts;
    tickCard(c);
  }

  function tick() {
    for (const card of state.cards.values()) tickCard(card);
  }

  function tickCard(c) {
    const status = c.status;
    if (!status) return;
    if (status.connectedSince && status.state === "CONNECTED") {
      const seconds = (serverNow() - Date.parse(status.connectedSince)) / 1000;
      c.uptime.textContent = formatDuration(seconds);
    } else {
      c.uptime.textContent = "not connected";
    }
    if (status.state === "QR_PENDING" && status.qrExpiresAt) {
      const left = Math.max(0, Math.ceil((Date.parse(status.qrExpiresAt) - serverNow()) / 1000));
      c.countdown.textContent = left > 0
        ? `This code expires in ${left} s; the next one appears by itself.`
        : "This code has expired; waiting for the next one…";
    } else {
      c.countdown.textContent = "";
    }
  }

  async function connect(c) {
    await sessionAction(c, M_CONNECT, { session: c.name });
  }

  async function disconnect(c, keep) {
    await sessionAction(c, M_DISCONNECT, { session: c.name, keep });
  }

  async function forget(c) {
    if (!await sessionAction(c, M_FORGET, { session: c.name })) return;
    state.added = state.added.filter((n) => n !== c.name);
    sessionStorage.setItem(ADDED_KEY, JSON.stringify(state.added));
    refreshSessions();
  }

  async function sessionAction(c, mutation, variables) {
    c.actionError.textContent = "";
    const buttons = [c.connect, c.newCode, c.disconnect, c.logout, c.forget];
    buttons.forEach((b) => { b.disabled = true; });
    let done = false;
    try {
      await gql(mutation, variables);
      done = true;
    } catch (err) {
      c.actionError.textContent = err.text;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
    refreshSessions();
    return done;
  }

  async function requestPairingCode(c) {
    c.pairError.textContent = "";
    c.pairCode.textContent = "";
    const phone = c.pairPhone.value.trim();
    if (!phone) {
      c.pairError.textContent = "Enter the phone's own number, with its country code.";
      c.pairPhone.focus();
      return;
    }
    c.pairButton.disabled = true;
    try {
      const data = await gql(M_PAIRING, { phone, session: c.name });
      c.pairCode.textContent = `Type this code on the phone: ${data.whatsAppRequestPairingCode}` +
        " (WhatsApp > Linked devices > Link a device > Link with phone number instead)";
    } catch (err) {
      c.pairError.textContent = err.text;
    } finally {
      c.pairButton.disabled = false;
    }
  }

  async function addSession(event) {
    event.preventDefault();
    const input = $("new-session");
    const name = input.value.trim();
    $("add-session-error").textContent = "";
    if (!SESSION_NAME.test(name)) {
      $("add-session-error").textContent = "A session name is 1 to 64 letters, digits, " +
        "'_' or '-'.";
      input.focus();
      return;
    }
    try {
      await gql(M_CONNECT, { session: name });
    } catch (err) {
      $("add-session-error").textContent = err.text;
      return;
    }
    if (!state.added.includes(name)) {
      state.added.push(name);
      sessionStorage.setItem(ADDED_KEY, JSON.stringify(state.added));
    }
    input.value = "";
    refreshSessions();
  }

  function loadAdded() {
    try {
      const names = JSON.parse(sessionStorage.getItem(ADDED_KEY) || "[]");
      return Array.isArray(names) ? names.filter((n) => SESSION_NAME.test(n)) : [];
    } catch (err) {
      return [];
    }
  }

  // ---- confirmation --------------------------------------------------------------------

  let confirmAction = null;

  function confirmThen(title, text, okLabel, action) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    confirmAction = action;
    dialog.showModal();
    $("confirm-cancel").focus();
  }

  function closeConfirm(run) {
    const action = confirmAction;
    confirmAction = null;
    $("confirm").close();
    if (run && action) action();
  }

  // ---- sending -------------------------------------------------------------------------

  // The text is never shortened here (no maxlength: it cuts pasted text without a word,
  // and counts UTF-16 units, not characters). The count uses the API's rule, Unicode code
  // points; an over-long text still goes to the API, whose refusal is shown as it is.
  function codePoints(text) {
    let count = 0;
    for (const _ of text) count += 1; // a string iterates by code point
    return count;
  }

  function updateCount() {
    const count = codePoints($("send-text").value);
    const max = state.limits ? state.limits.maxMessageLength : null;
    const line = $("send-count");
    const characters = count === 1 ? "character" : "characters";
    if (max === null) {
      line.textContent = `${count} ${characters}`;
      line.className = "hint";
    } else if (count > max) {
      line.textContent = `${count} of ${max} ${characters}: ${count - max} too many. The ` +
        "gateway refuses a longer message; shorten it or split it into several messages.";
      line.className = "error";
    } else {
      line.textContent = `${count} of ${max} ${characters}`;
      line.className = "hint";
    }
  }

  function sendFields() {
    const session = $("send-session").value || "default";
    const phone = $("send-phone").value.trim();
    const message = $("send-text").value;
    if (!phone) throw new ApiError("", "Enter the recipient's phone number, with its " +
      "country code (for example +1 415 555 2671).");
    return { session, phone, message };
  }

  async function sending(work) {
    const result = $("send-result");
    result.className = "";
    result.textContent = "Sending…";
    $("send-submit").disabled = true;
    $("send-test").disabled = true;
    try {
      result.textContent = await work();
      result.className = "ok";
    } catch (err) {
      result.textContent = err.text;
      result.className = "error";
    } finally {
      $("send-submit").disabled = false;
      $("send-test").disabled = false;
      refreshOverview();
    }
  }

  function kindOf(file) {
    const type = file.type || "";
    if (type === "image/webp") return "STICKER";
    if (type === "image/png" || type === "image/jpeg") return "IMAGE";
    if (type.startsWith("video/")) return "VIDEO";
    if (type === "audio/ogg" || type === "audio/opus") return "VOICE";
    if (type.startsWith("audio/")) return "AUDIO";
    return "DOCUMENT";
  }

  function attachmentChanged() {
    const file = $("send-file").files[0];
    const preview = $("send-preview");
    $("send-attachment").hidden = !file;
    preview.hidden = true;
    preview.removeAttribute("src");
    if (!file) return;
    $("send-kind").value = kindOf(file);
    $("send-file-chip").textContent = `${file.name} (${file.type || "unknown type"}, ` +
      `${file.size} bytes)`;
    if (file.type.startsWith("image/") && file.size <= PREVIEW_MAX_BYTES) {
      const reader = new FileReader(); // a data: URL: the page's policy allows no blob:
      reader.onload = () => {
        if ($("send-file").files[0] !== file) return; // another file was chosen since
        preview.src = reader.result;
        preview.hidden = false;
      };
      reader.readAsDataURL(file);
    }
  }

  function clearAttachment() {
    $("send-file").value = "";
    attachmentChanged();
  }

  function sendMedia(f, file) {
    const kind = $("send-kind").value;
    const input = { phoneNumber: f.phone, kind, session: f.session, file: null,
      idempotencyKey: randomKey() };
    if (CAPTIONED.has(kind) && f.message.trim()) input.caption = f.message;
    return gql(M_SEND_MEDIA, { input }, file);
  }

  function send(event) {
    event.preventDefault();
    sending(async () => {
      const f = sendFields();
      const file = $("send-file").files[0];
      if (file) {
        const m = (await sendMedia(f, file)).sendWhatsAppMedia;
        clearAttachment();
        return `Accepted: ${m.media.kind.toLowerCase()} ${m.id} (${m.media.mimeType}, ` +
          `${m.media.size} bytes) is ${m.state}. Its progress shows under Recent messages.`;
      }
      if (!f.message.trim()) throw new ApiError("", "Write a message to send.");
      const data = await gql(M_SEND, { input: {
        phoneNumber: f.phone, message: f.message, session: f.session,
        idempotencyKey: randomKey() } });
      const m = data.sendWhatsAppMessage;
      return `Accepted: message ${m.id} is ${m.state}. Its progress shows under Recent messages.`;
    });
  }

  function sendTest() {
    sending(async () => {
      const f = sendFields();
      const data = await gql(M_TEST, { phone: f.phone, session: f.session });
      return data.testWhatsAppConnection
        ? "WhatsApp acknowledged the test message: the session works."
        : "The test message was not acknowledged in time; check the session's state.";
    });
  }

  // ---- number checks -------------------------------------------------------------------

  const Q_CHECK = "query CheckNumbers($p: [String!]!, $s: String) { " +
    "whatsAppCheckNumbers(phoneNumbers: $p, session: $s) { input phoneNumber onWhatsApp " +
    "business checkedAt cached reason } }";

  async function checkNumbers(event) {
    event.preventDefault();
    const phones = $("check-phones").value.split(/[\n,;]+/).map((p) => p.trim())
      .filter((p) => p);
    const error = $("check-error");
    const list = $("check-result");
    list.replaceChildren();
    error.className = "";
    if (!phones.length) {
      error.textContent = "Enter at least one phone number, with its country code.";
      error.className = "error";
      return;
    }
    error.textContent = "Checking…";
    $("check-submit").disabled = true;
    try {
      const session = $("send-session").value || "default";
      const data = await gql(Q_CHECK, { p: phones, s: session });
      error.textContent = "";
      for (const c of data.whatsAppCheckNumbers) {
        const item = document.createElement("li");
        const verdict = c.onWhatsApp === true ? "on WhatsApp" +
          (c.business ? " (business)" : "") : c.onWhatsApp === false
          ? "NOT on WhatsApp: send by SMS instead" : `unknown (${c.reason || "no answer"})`;
        item.className = c.onWhatsApp === false ? "error" : c.onWhatsApp ? "ok" : "";
        item.textContent = `${c.phoneNumber}: ${verdict}` + (c.cached ? " · cached" : "");
        list.append(item);
      }
    } catch (err) {
      error.textContent = err.text;
      error.className = "error";
    } finally {
      $("check-submit").disabled = false;
    }
  }

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "dashboard-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---- recent messages -----------------------------------------------------------------

  async function loadMessages(more) {
    const variables = {
      session: $("messages-session").value || null,
      state: $("messages-state").value || null,
      first: more ? PAGE_SIZE : Math.min(200, state.messagesShown),
      after: more ? state.messagesCursor : null,
    };
    try {
      const page = (await gql(Q_MESSAGES, variables)).whatsAppMessages;
      const rows = page.edges.map((e) => messageRow(e.node));
      const body = $("messages-body");
      if (more) body.append(...rows);
      else body.replaceChildren(...rows);
      state.messagesShown = Math.max(PAGE_SIZE, body.children.length);
      state.messagesCursor = page.pageInfo.endCursor;
      $("messages-more").hidden = !page.pageInfo.hasNextPage;
      $("messages-empty").hidden = body.children.length > 0;
      $("messages-error").textContent = "";
    } catch (err) {
      if (err.code !== "UNAUTHENTICATED") $("messages-error").textContent = err.text;
    }
  }

  function mediaLabel(media) {
    const size = media.size >= 1048576 ? `${(media.size / 1048576).toFixed(1)} MB`
      : media.size >= 1024 ? `${Math.round(media.size / 1024)} KB` : `${media.size} B`;
    return `${media.kind.toLowerCase()} · ${media.mimeType} · ${size}`;
  }

  function messageRow(m) {
    const details = [];
    if (m.media) details.push(mediaLabel(m.media));
    if (m.reason) details.push(m.reason);
    if (m.error) details.push(m.error);
    if (m.attempts > 1) details.push(`${m.attempts} attempts`);
    if (m.uncertain) details.push("may have arrived twice");
    // data-label: on a narrow screen each row is a small card, labelled cell by cell.
    const stateCell = el("td", { "data-label": "State" },
      el("span", { class: `chip msg-${m.state}`, text: m.state }));
    const row = el("tr", { "data-message-id": m.id },
      el("td", { "data-label": "Accepted", text: formatTime(m.acceptedAt) }),
      el("td", { "data-label": "Session", text: m.session }),
      el("td", { "data-label": "To", text: m.phoneNumber }),
      stateCell,
      el("td", { "data-label": "Details", class: "details", text: details.join("; ") || "–",
        title: `message id ${m.id}` }));
    return row;
  }

  // ---- the message chart ---------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }

  async function loadChart() {
    try {
      const buckets = (await gql(Q_CHART)).whatsAppMessageChart;
      drawChart(buckets);
      $("chart-error").textContent = "";
    } catch (err) {
      if (err.code !== "UNAUTHENTICATED") $("chart-error").textContent = err.text;
    }
  }

  // One group per hour, four bars side by side (sent, delivered, read, failed), drawn
  // as SVG elements with the counts in data attributes; no library, no inline style.
  function drawChart(buckets) {
    const count = (b, s) => b[s.toLowerCase()];
    const totals = CHART_STATES.map((s) => buckets.reduce((n, b) => n + count(b, s), 0));
    CHART_STATES.forEach((s, i) => { $(`chart-total-${s}`).textContent = String(totals[i]); });
    const top = Math.max(1, ...buckets.flatMap((b) => CHART_STATES.map((s) => count(b, s))));
    const slot = 20;
    const bar = 4;
    const height = 120;
    const width = Math.max(1, buckets.length) * slot;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 16}`, role: "img",
      class: "chart-svg", "data-hours": String(buckets.length), "data-max": String(top),
      "aria-label": `Messages per hour, last ${buckets.length} hours: ` +
        CHART_STATES.map((s, i) => `${totals[i]} ${s.toLowerCase()}`).join(", ") });
    chart.append(svg("line", { x1: "0", x2: String(width), y1: String(height),
      y2: String(height), class: "axis" }));
    chart.append(svg("text", { x: "2", y: "9", class: "tick scale" }, `${top} per hour`));
    buckets.forEach((b, n) => {
      const hour = svg("g", { "data-start": b.start });
      CHART_STATES.forEach((s, i) => {
        const value = count(b, s);
        if (!value) return;
        const h = Math.max(1, Math.round((value / top) * height));
        const rect = svg("rect", { x: String(n * slot + 2 + i * bar), y: String(height - h),
          width: String(bar - 0.5), height: String(h), class: `bar bar-${s}`,
          "data-state": s, "data-count": String(value) },
        svg("title", {}, `${formatTime(b.start)}: ${value} ${s.toLowerCase()}`));
        hour.append(rect);
      });
      if (n % 6 === 0 || n === buckets.length - 1) {
        const label = new Date(b.start).getUTCHours().toString().padStart(2, "0");
        hour.append(svg("text", { x: String(n * slot + slot / 2), y: String(height + 13),
          class: "tick" }, `${label}h`));
      }
      chart.append(hour);
    });
    $("chart").replaceChildren(chart);
  }

  // ---- incoming messages ---------------------------------------------------------------

  // Sessions read one by one when the token may see several but not all (the API asks a
  // token limited to several sessions to name one); otherwise all at once ("").
  function incomingScopes() {
    const principal = state.gateway.principal;
    return principal.sessions && principal.sessions.length > 1 ? principal.sessions : [""];
  }

  // The API lists replies oldest first from a cursor: the page keeps the last cursor and
  // asks only for what came since, holding the newest INCOMING_KEPT in memory.
  async function loadIncoming() {
    try {
      for (const scope of incomingScopes()) {
        for (let n = 0; n < INCOMING_PAGES; n += 1) {
          const page = (await gql(Q_INCOMING, { session: scope || null, first: 200,
            after: state.incomingCursors.get(scope) || null })).whatsAppIncomingMessages;
          state.incoming.push(...page.edges.map((e) => e.node));
          if (page.pageInfo.endCursor) state.incomingCursors.set(scope, page.pageInfo.endCursor);
          if (!page.pageInfo.hasNextPage) break;
        }
      }
      state.incoming.sort((a, b) => Date.parse(a.receivedAt) - Date.parse(b.receivedAt));
      state.incoming = state.incoming.slice(-INCOMING_KEPT);
      renderConversations();
      $("incoming-error").textContent = "";
    } catch (err) {
      if (err.code !== "UNAUTHENTICATED") $("incoming-error").textContent = err.text;
    }
  }

  function conversationKey(m) {
    return `${m.session}\n${m.phoneNumber || m.senderJid}`;
  }

  function conversations() {
    const byKey = new Map();
    for (const m of state.incoming) {
      const key = conversationKey(m);
      if (!byKey.has(key)) byKey.set(key, []);
      byKey.get(key).push(m);
    }
    return [...byKey.entries()].sort((a, b) =>
      Date.parse(b[1][b[1].length - 1].receivedAt) - Date.parse(a[1][a[1].length - 1].receivedAt));
  }

  function renderConversations() {
    const list = conversations();
    $("conversations").replaceChildren(...list.slice(0, 20).map(([key, items]) => {
      const first = items[0];
      const who = first.phoneNumber || first.senderJid;
      const name = first.pushName ? ` (${first.pushName})` : "";
      const open = el("button", { type: "button", class: "secondary",
        "aria-label": `Open the conversation with ${who} on ${first.session}` }, "Open");
      open.addEventListener("click", () => openConversation(key));
      return el("article", { class: "conversation-card", "data-conversation": who,
        "data-session": first.session },
      el("header", { class: "row" }, el("h3", { text: `${who}${name}` }),
        el("span", { class: "muted", text: `session ${first.session} · ` +
          `${items.length} message${items.length === 1 ? "" : "s"}` }), open),
      el("ul", { class: "incoming-list" }, ...items.slice(-3).reverse().map(incomingItem)));
    }));
    $("incoming-empty").hidden = list.length > 0;
    if (state.conversation) openConversation(state.conversation, false);
  }

  function incomingItem(m) {
    const quote = m.quotedMessageId ? ` · replies to message ${m.quotedMessageId}` : "";
    const item = el("li", { "data-incoming-id": m.id },
      el("span", { class: "muted", text: `${formatTime(m.receivedAt)} · ` }),
      el("span", { class: "incoming-text", text: incomingText(m) }),
      el("span", { class: "muted quote", text: quote }));
    if (m.media) {
      item.append(el("span", { class: "chip file-chip", "data-testid": "file-chip",
        text: mediaLabel(m.media) + (m.media.fileName ? ` · ${m.media.fileName}` : "") }));
      if (m.media.kind === "IMAGE" || m.media.kind === "STICKER") thumbnail(item, m.media);
    }
    return item;
  }

  const THUMBNAIL_MAX_BYTES = 1048576;
  const thumbnails = new Map(); // media id -> promise of a data: URL (or null)

  function thumbnail(item, media) {
    // Fetched once with the token (GET /media/<id>), shown as a data: URL (the page's
    // policy allows no blob:); small pictures only, best effort: the chip says the rest.
    if (media.size > THUMBNAIL_MAX_BYTES) return;
    if (!thumbnails.has(media.id)) thumbnails.set(media.id, fetchThumbnail(media));
    thumbnails.get(media.id).then((src) => {
      if (src) item.append(el("img", { class: "thumbnail", src, "data-testid": "thumbnail",
        alt: `received ${media.kind.toLowerCase()}` }));
    });
  }

  async function fetchThumbnail(media) {
    const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
    try {
      const response = await fetch(media.url, { headers, cache: "no-store",
        credentials: "omit" });
      if (!response.ok) return null;
      const blob = await response.blob();
      return await new Promise((resolve) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => resolve(null);
        reader.readAsDataURL(blob);
      });
    } catch (err) {
      return null;
    }
  }

  function incomingText(m) {
    if (m.text !== null && m.text !== undefined) return m.text;
    return m.kind === "text" ? "(text not kept)" : `(${m.kind})`;
  }

  // The number's incoming messages (held here) with the messages sent to it (asked for:
  // whatsAppMessages by number, which has no text), in one timeline, the newest last.
  async function openConversation(key, fresh = true) {
    const items = state.incoming.filter((m) => conversationKey(m) === key);
    if (!items.length) return;
    state.conversation = key;
    const first = items[0];
    const who = first.phoneNumber || first.senderJid;
    $("conversation").hidden = false;
    $("conversation").dataset.conversation = who;
    $("conversation-title").textContent = `Conversation with ${who} on ${first.session}`;
    if (!fresh && state.outgoing) return renderTimeline(items, state.outgoing);
    let outgoing = [];
    try {
      if (first.phoneNumber) {
        outgoing = (await gql(Q_OUTGOING, { session: first.session, phone: first.phoneNumber }))
          .whatsAppMessages.edges.map((e) => e.node);
      }
      $("conversation-error").textContent = "";
    } catch (err) {
      $("conversation-error").textContent = err.text;
    }
    state.outgoing = outgoing;
    $("conversation-note").textContent = first.phoneNumber
      ? "Messages sent to this number show their state (the gateway keeps no sent text)."
      : "The sender has no phone number (WhatsApp named only its hidden id): only what it wrote.";
    renderTimeline(items, outgoing);
  }

  function renderTimeline(items, outgoing) {
    const byWaId = new Map(outgoing.filter((o) => o.whatsAppMessageId)
      .map((o) => [o.whatsAppMessageId, o]));
    const entries = items.map((m) => ({ at: Date.parse(m.receivedAt), node: (() => {
      const quoted = m.quotedMessageId && byWaId.get(m.quotedMessageId);
      const item = incomingItem(m);
      item.className = "in";
      if (quoted) item.querySelector(".quote").textContent = ` · replies to our message ` +
        `${quoted.id} (${quoted.state})`;
      return item;
    })() }));
    for (const o of outgoing) {
      entries.push({ at: Date.parse(o.acceptedAt), node: el("li", { class: "out",
        "data-message-id": o.id }, el("span", { class: "muted",
        text: `${formatTime(o.acceptedAt)} · sent ` }),
      el("span", { class: `chip msg-${o.state}`, text: o.state }),
      el("span", { class: "muted", text: ` message ${o.id}` })) });
    }
    entries.sort((a, b) => a.at - b.at);
    $("conversation-timeline").replaceChildren(...entries.map((e) => e.node));
  }

  function closeConversation() {
    state.conversation = null;
    state.outgoing = null;
    $("conversation").hidden = true;
  }

  // ---- webhooks ------------------------------------------------------------------------

  async function loadWebhooks() {
    try {
      const hooks = (await gql(Q_WEBHOOKS)).webhooks;
      renderWebhooks(hooks);
      $("webhooks-error").textContent = "";
    } catch (err) {
      if (err.code !== "UNAUTHENTICATED") $("webhooks-error").textContent = err.text;
    }
  }

  function renderWebhooks(hooks) {
    const seen = new Set();
    for (const hook of hooks) {
      seen.add(hook.id);
      let view = state.webhookViews.get(hook.id);
      if (!view) {
        view = makeWebhookCard(hook.id);
        state.webhookViews.set(hook.id, view);
      }
      $("webhooks").append(view.root);
      updateWebhookCard(view, hook);
    }
    for (const [id, view] of state.webhookViews) {
      if (!seen.has(id)) {
        view.root.remove();
        state.webhookViews.delete(id);
      }
    }
    $("webhooks-empty").hidden = hooks.length > 0;
  }

  function makeWebhookCard(id) {
    const v = { id, hook: null };
    v.url = el("h3", { class: "webhook-url" });
    v.badge = el("span", { class: "badge", "data-testid": "webhook-state" });
    v.last = el("dd", { "data-testid": "webhook-last" });
    v.failures = el("dd", { "data-testid": "webhook-failures" });
    v.cursor = el("dd", { "data-testid": "webhook-cursor" });
    v.test = el("button", { type: "button", class: "secondary" }, "Send test event");
    v.toggle = el("button", { type: "button", class: "secondary" });
    v.after = el("input", { id: `replay-after-${id}`, type: "number", min: "0", step: "1",
      inputmode: "numeric", placeholder: "e.g. 1200" });
    v.since = el("input", { id: `replay-since-${id}`, type: "datetime-local", step: "1" });
    v.replay = el("button", { type: "submit", class: "danger" }, "Replay");
    v.result = el("p", { role: "status", "data-testid": "webhook-result" });
    v.test.addEventListener("click", () => testWebhook(v));
    v.toggle.addEventListener("click", () => toggleWebhook(v));
    const replayForm = el("form", { class: "replay", novalidate: "" },
      el("div", { class: "fields" },
        el("div", {}, el("label", { for: v.after.id, text: "Replay after event number" }),
          v.after),
        el("div", {}, el("label", { for: v.since.id, text: "or from this time (your clock)" }),
          v.since)),
      el("div", { class: "row actions" }, v.replay));
    replayForm.addEventListener("submit", (event) => {
      event.preventDefault();
      askReplay(v);
    });
    v.root = el("article", { class: "webhook", "data-webhook-id": id },
      el("header", { class: "session-head" }, v.url, v.badge),
      el("dl", { class: "facts" },
        el("div", {}, el("dt", { text: "Last delivery" }), v.last),
        el("div", {}, el("dt", { text: "Failures" }), v.failures),
        el("div", {}, el("dt", { text: "Cursor (last event acknowledged)" }), v.cursor)),
      el("div", { class: "row actions" }, v.test, v.toggle), v.result,
      el("details", {}, el("summary", { text: "Replay past events" }), replayForm));
    return v;
  }

  function updateWebhookCard(v, hook) {
    v.hook = hook;
    v.root.dataset.enabled = String(hook.enabled);
    v.root.className = `webhook ${hook.enabled ? "tone-ok" : "tone-bad"}`;
    v.url.textContent = hook.url;
    v.badge.textContent = hook.enabled ? "Enabled"
      : `Disabled: ${hook.disabledReason || "no reason given"}`;
    v.last.textContent = hook.lastDeliveryAt === null ? "none yet"
      : `${formatTime(hook.lastDeliveryAt * 1000)} · ` + (hook.lastStatus === null
        ? `no answer${hook.lastError ? ` (${hook.lastError})` : ""}` : `HTTP ${hook.lastStatus}`);
    v.failures.textContent = String(hook.failures);
    v.cursor.textContent = String(hook.cursor);
    v.toggle.textContent = hook.enabled ? "Disable" : "Enable";
    v.toggle.setAttribute("aria-label", `${hook.enabled ? "Disable" : "Enable"} ${hook.url}`);
    v.test.setAttribute("aria-label", `Send a test event to ${hook.url}`);
    v.replay.setAttribute("aria-label", `Replay events to ${hook.url}`);
  }

  async function webhookAction(v, work) {
    v.result.className = "";
    v.result.textContent = "Working…";
    try {
      v.result.textContent = await work();
      v.result.className = "ok";
    } catch (err) {
      v.result.textContent = err.text;
      v.result.className = "error";
    }
    loadWebhooks();
  }

  function testWebhook(v) {
    webhookAction(v, async () => {
      const r = (await gql(M_WEBHOOK_TEST, { id: v.id })).sendTestWebhook;
      if (r.delivered) return `Test event delivered: the endpoint answered HTTP ${r.status}.`;
      throw new ApiError("", `Test event not delivered: ${r.status === null
        ? r.error || "no answer" : `HTTP ${r.status}`}${r.error && r.status !== null
        ? ` (${r.error})` : ""}`);
    });
  }

  function toggleWebhook(v) {
    const enable = !v.hook.enabled;
    const run = () => webhookAction(v, async () => {
      await gql(M_WEBHOOK_ENABLE, { id: v.id, enabled: enable });
      return enable ? "Enabled: delivery resumes from its cursor." : "Disabled.";
    });
    if (enable) run();
    else confirmThen(`Disable ${v.hook.url}?`, "It receives no events until it is " +
      "enabled again; then it resumes from its cursor, so nothing is lost while the log " +
      "keeps the events.", "Disable", run);
  }

  function askReplay(v) {
    const after = v.after.value.trim();
    const since = v.since.value;
    if (Boolean(after) === Boolean(since)) {
      v.result.className = "error";
      v.result.textContent = "Enter either an event number or a time, not both.";
      return;
    }
    const sinceIso = since ? new Date(since).toISOString() : null;
    const from = after ? `after event ${after}` : `from ${new Date(since).toLocaleString()}`;
    confirmThen(`Replay to ${v.hook.url}?`, `Every event ${from} is delivered again, ` +
      "with the same event ids (a receiver that dedupes skips what it has).", "Replay",
    () => webhookAction(v, async () => {
      const variables = { id: v.id, after: after ? Number(after) : null, since: sinceIso };
      const hook = (await gql(M_WEBHOOK_REPLAY, variables)).replayWebhooks;
      return `Replay started ${from}: the cursor is now ${hook.cursor}.`;
    }));
  }

  // ---- helpers ---------------------------------------------------------------------------

  function formatTime(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function formatDuration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${s % 60} s`;
    return `${s} s`;
  }

  function showNotice(text) {
    $("notice").textContent = text;
    $("notice").hidden = false;
  }

  function hideNotice() {
    $("notice").hidden = true;
  }

  function bindStatic() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      if (!token) {
        $("login-error").textContent = "Paste an API token first.";
        return;
      }
      signIn(token, true);
    });
    $("sign-out").addEventListener("click", () => signedOut(null));
    $("add-session-form").addEventListener("submit", addSession);
    $("send-form").addEventListener("submit", send);
    $("send-file").addEventListener("change", attachmentChanged);
    $("send-file-clear").addEventListener("click", clearAttachment);
    $("send-text").addEventListener("input", updateCount);
    updateCount();
    $("send-test").addEventListener("click", sendTest);
    $("check-form").addEventListener("submit", checkNumbers);
    $("messages-refresh").addEventListener("click", () => loadMessages(false));
    $("messages-more").addEventListener("click", () => loadMessages(true));
    for (const id of ["messages-session", "messages-state"]) {
      $(id).addEventListener("change", () => {
        state.messagesShown = PAGE_SIZE;
        loadMessages(false);
      });
    }
    $("webhooks-refresh").addEventListener("click", loadWebhooks);
    $("conversation-close").addEventListener("click", closeConversation);
    $("confirm-ok").addEventListener("click", () => closeConfirm(true));
    $("confirm-cancel").addEventListener("click", () => closeConfirm(false));
    $("confirm").addEventListener("cancel", () => { confirmAction = null; });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.running) {
        refreshSessions();
        refreshOverview();
        // Never sooner than their period, however often the tab comes back.
        if (Date.now() - state.slowAt >= SLOW_PANELS_MS) refreshSlowPanels();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
