// Ward browser client: sign-in, rooms, messages, presence and reconnection
// over the client protocol v1 WebSocket at /ws. Plain JavaScript, no build.
// Text from the network is always inserted with textContent, never as HTML.
//
// Test and debug hooks (used by the end-to-end test, harmless otherwise):
// - window.__wardSocket is the current WebSocket;
// - while window.__wardPauseReconnect is true, automatic reconnection waits
//   (the "Retry now" button still connects).
'use strict';

(() => {
  const NAME_RULE = /^[A-Za-z0-9._:-]{1,64}$/;
  const PAGE = 50;
  const PING_EVERY_MS = 25000;
  const SILENCE_LIMIT_MS = 60000;
  const WATCHDOG_EVERY_MS = 5000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  const DRAIN_JITTER_MS = 1000;
  const RATE_LIMITED_ATTEMPT = 4; // backoff after 4429 starts at up to 8 s
  const STABLE_AFTER_MS = 10000;
  const TYPING_THIN_MS = 3000;
  const TYPING_IDLE_MS = 5000;
  const TYPING_EXPIRE_MS = 6000;
  const READ_THIN_MS = 1000;
  const NOTICE_MS = 8000;
  const MAX_FRAME_BYTES = 65536; // the server's default frame limit

  const IDENTITY_KEY = 'ward.identity';
  const TOKEN_KEY = 'ward.token';
  const ROOMS_KEY = 'ward.rooms.';

  const state = {
    identity: null, // {user, name} or {token}; null when signed out
    me: null, // USER from the last welcome
    ready: false, // welcome received on the current socket
    everWelcomed: false, // since the last sign-in
    socket: null,
    rooms: new Map(),
    current: null, // name of the room shown
    refs: new Map(), // ref -> what the request was for
    nextRef: 1,
    attempt: 0, // reconnect attempts since the last stable connection
    retryAt: 0,
    lastFrameAt: 0,
    timers: {},
    typing: { active: false, room: null, sentAt: 0, idle: null },
  };

  const $ = (id) => document.getElementById(id);

  // Creates an element; `text` (optional) goes in as textContent.
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function testid(node, id) {
    node.dataset.testid = id;
    return node;
  }

  // ---- small helpers -------------------------------------------------

  const pad = (n) => String(n).padStart(2, '0');

  function hhmm(ts) {
    const d = new Date(ts);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function shortTime(ts) {
    const d = new Date(ts);
    if (d.toDateString() === new Date().toDateString()) return hhmm(ts);
    const day = d.toLocaleDateString(undefined, { day: 'numeric', month: 'short' });
    return `${day} ${hhmm(ts)}`;
  }

  function fullTime(ts) {
    return new Date(ts).toLocaleString(undefined, { dateStyle: 'full', timeStyle: 'medium' });
  }

  function nameOf(user) {
    return (user && (user.name || user.id)) || 'someone';
  }

  function isMe(user) {
    return !!(state.me && user && user.id === state.me.id);
  }

  // A client_msg_id: a UUID where the browser offers one (secure contexts).
  function newId() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function clearTimer(name) {
    clearTimeout(state.timers[name]);
    clearInterval(state.timers[name]);
    delete state.timers[name];
  }

  // ---- storage: the identity and rooms are remembered, the token only per tab

  function readJson(storage, key) {
    try {
      return JSON.parse(storage.getItem(key));
    } catch {
      return null;
    }
  }

  function writeJson(storage, key, value) {
    try {
      storage.setItem(key, JSON.stringify(value));
    } catch {
      // Storage may be full or disabled; the client works without it.
    }
  }

  function saveRooms() {
    if (!state.me) return;
    writeJson(localStorage, ROOMS_KEY + state.me.id, [...state.rooms.keys()]);
  }

  // ---- connection state ----------------------------------------------

  // kind: connecting | connected | reconnecting | offline
  function setConn(kind, detail) {
    state.conn = { kind, detail };
    renderConn();
  }

  function renderConn() {
    const { kind, detail } = state.conn;
    const box = $('conn-state');
    box.dataset.state = kind;
    document.body.dataset.conn = kind;
    const label = el('span');
    if (kind === 'reconnecting' && state.timers.retry) {
      const secs = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      // The countdown is for the eye; a screen reader hears the state once.
      const count = el('span', null, ` in ${secs} s`);
      count.setAttribute('aria-hidden', 'true');
      label.append('Reconnecting', count);
    } else {
      label.textContent = {
        connecting: 'Connecting…',
        connected: 'Connected',
        reconnecting: 'Reconnecting…',
        offline: 'Offline',
      }[kind];
    }
    box.replaceChildren(label);
    if (detail) box.title = detail;
    else box.removeAttribute('title');
    const canRetry = state.identity && (kind === 'reconnecting' || kind === 'offline');
    $('retry-now').hidden = !canRetry || (!state.timers.retry && kind !== 'offline');
  }

  function showNotice(text) {
    const box = $('global-notice');
    box.textContent = text;
    box.hidden = false;
    clearTimer('notice');
    state.timers.notice = setTimeout(() => {
      box.hidden = true;
    }, NOTICE_MS);
  }

  // ---- socket lifecycle ----------------------------------------------

  function wsUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}/ws`;
  }

  function connect() {
    clearTimer('retry');
    clearTimer('countdown');
    if (!state.identity) return;
    dropSocket();
    setConn(state.everWelcomed ? 'reconnecting' : 'connecting');
    const ws = new WebSocket(wsUrl());
    state.socket = ws;
    window.__wardSocket = ws;
    state.lastFrameAt = Date.now();
    startWatchdog();
    ws.addEventListener('open', () => onOpen(ws));
    ws.addEventListener('message', (ev) => onFrame(ws, ev));
    ws.addEventListener('close', (ev) => onClose(ws, ev.code, ev.reason));
  }

  function onOpen(ws) {
    if (ws !== state.socket) return;
    const id = state.identity;
    const hello = id.token ? { type: 'hello', token: id.token } : { type: 'hello', user: id.user };
    if (!id.token && id.name) hello.name = id.name;
    ws.send(JSON.stringify(hello));
  }

  // Forgets the current socket without reacting to its close.
  function dropSocket() {
    const ws = state.socket;
    if (!ws) return;
    state.socket = null;
    teardown();
    try {
      ws.close(1000);
    } catch {
      // Already closing.
    }
  }

  // Clears everything that belonged to the socket that just went away.
  function teardown() {
    state.ready = false;
    ['ping', 'watchdog', 'stable'].forEach(clearTimer);
    stopTyping(false);
    const lost = [...state.refs.values()];
    state.refs.clear();
    lost.forEach(onRequestLost);
    for (const room of state.rooms.values()) clearRemoteTyping(room);
    renderTyping();
  }

  function onClose(ws, code, reason) {
    if (ws !== state.socket) return;
    state.socket = null;
    teardown();
    if (!state.identity) return;
    const why = reason ? `${code}: ${reason}` : `code ${code}`;
    if (code === 4401) {
      showSignIn('Sign-in was refused: the token is missing, invalid or expired. Please sign in again.');
    } else if (code === 4400 || code === 1009) {
      setConn('offline', `Closed by the server (${why})`);
      showNotice(`The server refused this client (${why}). Use "Retry now" to try again.`);
    } else if (code === 1000) {
      setConn('offline', `Closed by the server (${why})`);
    } else if (code === 1012) {
      scheduleReconnect(Math.random() * DRAIN_JITTER_MS);
    } else if (code === 4429) {
      // Rate limited again and again: come back later, not at once.
      state.attempt = Math.max(state.attempt, RATE_LIMITED_ATTEMPT);
      scheduleReconnect(backoffDelay());
    } else {
      scheduleReconnect(backoffDelay());
    }
  }

  // Full jitter: a random delay up to an exponentially growing cap.
  function backoffDelay() {
    const cap = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
    state.attempt = Math.min(state.attempt + 1, 30);
    return Math.random() * cap;
  }

  function scheduleReconnect(delay) {
    clearTimer('retry');
    clearTimer('countdown');
    state.retryAt = Date.now() + delay;
    state.timers.retry = setTimeout(autoReconnect, delay);
    state.timers.countdown = setInterval(renderConn, 1000);
    setConn('reconnecting');
  }

  function autoReconnect() {
    delete state.timers.retry;
    if (window.__wardPauseReconnect) {
      scheduleReconnect(backoffDelay());
      return;
    }
    if (navigator.onLine === false) {
      clearTimer('countdown');
      setConn('offline', 'This computer has no network; waiting for it to return');
      return;
    }
    connect();
  }

  function startWatchdog() {
    clearTimer('watchdog');
    state.timers.watchdog = setInterval(() => {
      if (Date.now() - state.lastFrameAt <= SILENCE_LIMIT_MS) return;
      // Nothing heard for too long: treat the socket as dead at once.
      const ws = state.socket;
      state.socket = null;
      teardown();
      try {
        ws.close(4000, 'silent');
      } catch {
        // Ignored: the socket is abandoned either way.
      }
      scheduleReconnect(backoffDelay());
    }, WATCHDOG_EVERY_MS);
  }

  // ---- frames --------------------------------------------------------

  function send(frame) {
    const ws = state.socket;
    if (!state.ready || !ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // Sends a frame with a fresh ref; `what` is kept until the answer comes.
  function request(frame, what) {
    const ref = `r${state.nextRef++}`;
    frame.ref = ref;
    if (!send(frame)) return null;
    state.refs.set(ref, what);
    return ref;
  }

  function onFrame(ws, ev) {
    if (ws !== state.socket) return;
    state.lastFrameAt = Date.now();
    if (typeof ev.data !== 'string') return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      console.warn('ward: a frame that is not JSON was ignored');
      return;
    }
    if (!frame || typeof frame.type !== 'string') return;
    let what = null;
    if (frame.ref != null) {
      what = state.refs.get(String(frame.ref)) || null;
      state.refs.delete(String(frame.ref));
    }
    const handler = handlers[frame.type];
    if (handler) handler(frame, what);
  }

  function roomOf(frame) {
    return state.rooms.get(frame.room) || null;
  }

  const handlers = {
    welcome: onWelcome,
    room_joined: onRoomJoined,
    room_left: () => {},
    new_message: (f) => {
      const room = f.message && state.rooms.get(f.message.room);
      if (room) addMessages(room, [f.message], 'append', true);
    },
    ack: onAck,
    history: onHistory,
    error: onError,
    typing: onRemoteTyping,
    user_joined: (f) => {
      const room = roomOf(f);
      if (!room || !f.user) return;
      room.members.set(f.user.id, f.user);
      room.memberCount = room.members.size;
      renderRoomMeta(room);
    },
    user_left: (f) => {
      const room = roomOf(f);
      if (!room || !f.user) return;
      room.members.delete(f.user.id);
      room.memberCount = room.members.size;
      dropRemoteTyping(room, f.user.id);
      renderRoomMeta(room);
    },
    room_info_update: (f) => {
      const room = roomOf(f);
      if (!room || typeof f.member_count !== 'number') return;
      room.memberCount = f.member_count;
      renderRoomMeta(room);
    },
    message_acknowledged: onMessageAcknowledged,
    ack_overdue: (f) => {
      const room = roomOf(f);
      if (!room) return;
      room.overdue.add(f.id);
      renderAck(room, f.id);
    },
    read_receipt: (f) => {
      const room = roomOf(f);
      if (!room || !f.user || isMe(f.user)) return;
      room.reads.set(f.user.id, { user: f.user, up_to: f.up_to });
      renderReceipts(room);
    },
    pong: () => {},
  };

  function onWelcome(frame) {
    if (state.me && frame.user && state.me.id !== frame.user.id) resetRooms();
    state.me = frame.user;
    state.ready = true;
    clearTimer('retry');
    clearTimer('countdown');
    setConn('connected');
    $('me-name').textContent = nameOf(state.me);
    $('me-name-narrow').textContent = nameOf(state.me);
    if (!state.everWelcomed) firstWelcome();
    state.timers.stable = setTimeout(() => {
      state.attempt = 0;
    }, STABLE_AFTER_MS);
    state.timers.ping = setInterval(() => send({ type: 'ping' }), PING_EVERY_MS);
    for (const room of state.rooms.values()) joinRoom(room);
  }

  function firstWelcome() {
    state.everWelcomed = true;
    const stored = readJson(localStorage, ROOMS_KEY + state.me.id);
    if (Array.isArray(stored)) {
      stored.filter((n) => NAME_RULE.test(n) && !state.rooms.has(n)).forEach(addRoom);
    }
    showApp();
    if (!state.current && state.rooms.size) switchRoom(state.rooms.keys().next().value);
  }

  function onError(frame, what) {
    const text = frame.message || frame.code || 'error';
    if (!state.ready) {
      $('signin-error').textContent = `The server answered: ${text}`;
      $('signin-error').hidden = false;
      return;
    }
    if (!what) {
      showNotice(`The server answered: ${text}`);
      return;
    }
    const room = state.rooms.get(what.room);
    if (what.kind === 'send' && room) onSendFailed(room, what.cmid, text, frame.code);
    else if (what.kind === 'join') onJoinFailed(what.room, text);
    else if (what.kind === 'history' && room) onHistoryFailed(room, text);
    else if (what.kind === 'acknowledge' && room) onAcknowledgeFailed(room, what.id, text);
    else if (what.kind !== 'typing' && what.kind !== 'mark_read') showNotice(text);
  }

  // A request whose socket went away before its answer.
  function onRequestLost(what) {
    const room = state.rooms.get(what.room);
    if (!room) return;
    if (what.kind === 'send') {
      const p = room.pending.get(what.cmid);
      if (p && p.state === 'sending') {
        p.ref = null;
        renderPending(p);
      }
    } else if (what.kind === 'history') {
      room.loadingHistory = false;
      renderLoadEarlier(room);
    } else if (what.kind === 'acknowledge') {
      room.acking.delete(what.id);
      renderAck(room, what.id);
    }
  }

  // ---- rooms ---------------------------------------------------------

  function addRoom(name) {
    const room = {
      name,
      joined: false,
      messages: new Map(), // id -> MESSAGE
      items: new Map(), // id -> its <li>
      order: [], // ids shown, oldest first
      pending: new Map(), // client_msg_id -> a message being sent
      awaiting: new Map(), // acknowledged id -> client_msg_id, until new_message
      members: new Map(),
      memberCount: 0,
      reads: new Map(), // user id -> {user, up_to}
      typing: new Map(), // user id -> {user, timer}
      overdue: new Set(),
      acking: new Set(),
      ackErrors: new Map(),
      unread: 0,
      urgentUnread: 0,
      more: false,
      loadingHistory: false,
      lastRead: null,
      lastMarkAt: 0,
      markTimer: null,
      scroll: null, // where the reader was when the room was last hidden
      stick: true, // the reader follows the newest message
    };
    room.view = buildRoomView(room);
    state.rooms.set(name, room);
    renderRoomList();
    return room;
  }

  function buildRoomView(room) {
    const scroller = testid(el('div', 'scroller'), 'room-scroller');
    const notice = testid(el('div', 'room-notice'), 'room-notice');
    notice.setAttribute('role', 'status');
    notice.hidden = true;
    const earlier = testid(el('button', 'load-earlier', 'Load earlier messages'), 'load-earlier');
    earlier.type = 'button';
    earlier.hidden = true;
    earlier.addEventListener('click', () => loadEarlier(room));
    const historyError = el('p', 'form-error');
    historyError.hidden = true;
    const list = testid(el('ol', 'messages'), 'message-list');
    list.setAttribute('role', 'log');
    list.setAttribute('aria-live', 'polite');
    list.setAttribute('aria-label', `Messages in ${room.name}`);
    scroller.append(notice, earlier, historyError, list);
    scroller.addEventListener('scroll', () => {
      room.stick = isAtBottom(room);
    });
    return { scroller, notice, earlier, historyError, list };
  }

  function resetRooms() {
    for (const room of state.rooms.values()) clearRemoteTyping(room);
    state.rooms.clear();
    state.current = null;
    renderRoomList();
    renderCurrent();
  }

  // Joins (or re-joins, resuming after the last message seen).
  function joinRoom(room) {
    const frame = { type: 'join_room', room: room.name };
    const since = room.order[room.order.length - 1];
    if (since) frame.since = since;
    request(frame, { kind: 'join', room: room.name, since: since || null });
  }

  function onRoomJoined(frame, what) {
    const room = roomOf(frame);
    if (!room) return;
    const resumed = !!(what && what.since);
    room.joined = true;
    room.members = new Map((frame.members || []).map((u) => [u.id, u]));
    room.memberCount = room.members.size;
    if (Array.isArray(frame.reads)) {
      const reads = frame.reads.filter((r) => r.user && !isMe(r.user));
      room.reads = new Map(reads.map((r) => [r.user.id, r]));
    }
    const messages = Array.isArray(frame.messages) ? frame.messages : [];
    addMessages(room, messages, 'append', resumed);
    if (!resumed) room.more = room.more || messages.length >= PAGE;
    if (frame.recovered === false) showGapNotice(room);
    renderLoadEarlier(room);
    renderRoomMeta(room);
    renderReceipts(room);
    resendPending(room);
  }

  function onJoinFailed(name, text) {
    const room = state.rooms.get(name);
    if (!room) return;
    if (!room.joined) {
      removeRoom(room);
      const box = $('join-error');
      box.textContent = `Could not join ${name}: ${text}`;
      box.hidden = false;
      return;
    }
    room.joined = false;
    setRoomNotice(room, `Could not re-join this room: ${text}`, []);
  }

  function showGapNotice(room) {
    const reload = el('button', 'link-button', 'Load history');
    reload.type = 'button';
    reload.addEventListener('click', () => reloadRoom(room));
    setRoomNotice(room, 'Some earlier messages may be missing; load history.', [reload]);
  }

  function setRoomNotice(room, text, buttons) {
    const box = room.view.notice;
    const dismiss = el('button', 'link-button', 'Dismiss');
    dismiss.type = 'button';
    dismiss.addEventListener('click', () => {
      box.hidden = true;
    });
    box.replaceChildren(el('span', null, text), ...buttons, dismiss);
    box.hidden = false;
  }

  // Starts the room afresh from the latest page of history.
  function reloadRoom(room) {
    room.view.notice.hidden = true;
    room.messages.clear();
    room.items.clear();
    room.order = [];
    room.view.list.querySelectorAll('li:not(.pending)').forEach((li) => li.remove());
    room.more = false;
    joinRoom(room);
  }

  function leaveRoom(room) {
    if (state.typing.room === room.name) stopTyping(true);
    request({ type: 'leave_room', room: room.name }, { kind: 'leave', room: room.name });
    removeRoom(room);
  }

  function removeRoom(room) {
    clearRemoteTyping(room);
    clearTimeout(room.markTimer);
    state.rooms.delete(room.name);
    saveRooms();
    if (state.current === room.name) {
      state.current = null;
      const next = state.rooms.keys().next();
      if (!next.done) switchRoom(next.value);
      else renderCurrent();
    }
    renderRoomList();
  }

  function switchRoom(name) {
    const old = state.rooms.get(state.current);
    if (old && old.name !== name) {
      old.scroll = scrollState(old);
      if (state.typing.room === old.name) stopTyping(true);
    }
    state.current = name;
    const room = state.rooms.get(name);
    if (room) {
      room.unread = 0;
      room.urgentUnread = 0;
    }
    renderCurrent();
    renderRoomList();
    closeDrawers();
  }

  // ---- messages ------------------------------------------------------

  // Adds messages not shown yet; updates those already shown (dedupe by id).
  function addMessages(room, messages, where, countUnread) {
    const fresh = [];
    for (const msg of messages) {
      if (!msg || typeof msg.id !== 'string') continue;
      if (room.messages.has(msg.id)) {
        updateMessage(room, msg);
        continue;
      }
      room.messages.set(msg.id, msg);
      settlePending(room, msg);
      fresh.push(msg);
    }
    if (!fresh.length) return;
    const atBottom = isAtBottom(room);
    if (where === 'prepend') prependItems(room, fresh);
    else appendItems(room, fresh);
    fresh.forEach((m) => dropRemoteTyping(room, m.from && m.from.id));
    if (where === 'append' && countUnread) countUnreadFrom(room, fresh);
    if (where === 'append' && (atBottom || fresh.some((m) => isMe(m.from)))) {
      scrollToBottom(room);
    }
    renderReceipts(room);
    markReadSoon(room);
  }

  function appendItems(room, messages) {
    const firstPending = room.view.list.querySelector('li.pending');
    for (const msg of messages) {
      const li = buildMessage(room, msg);
      room.items.set(msg.id, li);
      room.order.push(msg.id);
      room.view.list.insertBefore(li, firstPending);
    }
  }

  // Inserts older messages on top, keeping what the reader sees in place.
  function prependItems(room, messages) {
    const scroller = room.view.scroller;
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    const frag = document.createDocumentFragment();
    for (const msg of messages) {
      const li = buildMessage(room, msg);
      room.items.set(msg.id, li);
      frag.append(li);
    }
    room.order.unshift(...messages.map((m) => m.id));
    room.view.list.prepend(frag);
    scroller.scrollTop = scroller.scrollHeight - fromBottom;
  }

  function updateMessage(room, msg) {
    Object.assign(room.messages.get(msg.id), msg);
    renderAck(room, msg.id);
  }

  function countUnreadFrom(room, messages) {
    if (room.name === state.current && document.visibilityState === 'visible') return;
    const others = messages.filter((m) => !isMe(m.from));
    room.unread += others.length;
    room.urgentUnread += others.filter((m) => m.priority === 'urgent').length;
    renderRoomList();
  }

  function buildMessage(room, msg) {
    const li = testid(el('li', 'msg'), 'message');
    li.dataset.messageId = msg.id;
    const urgent = msg.priority === 'urgent';
    if (urgent) li.classList.add('urgent');
    if (isMe(msg.from)) li.classList.add('mine');
    const head = el('div', 'msg-head');
    if (urgent) head.append(testid(el('span', 'badge badge-urgent', '⚠ Urgent'), 'urgent-label'));
    head.append(testid(el('span', 'msg-from', nameOf(msg.from)), 'message-from'));
    if (Number.isFinite(msg.ts)) {
      const time = el('time', 'msg-time', shortTime(msg.ts));
      time.dateTime = new Date(msg.ts).toISOString();
      time.title = fullTime(msg.ts);
      head.append(time);
    }
    const text = testid(el('div', 'msg-text', msg.text), 'message-text');
    const ack = testid(el('div', 'msg-ack'), 'message-ack');
    li.append(head, text, ack);
    fillAck(room, msg, ack);
    return li;
  }

  function renderAck(room, id) {
    const li = room.items.get(id);
    const msg = room.messages.get(id);
    if (li && msg) fillAck(room, msg, li.querySelector('.msg-ack'));
  }

  // The acknowledgement area of a needs_ack message.
  function fillAck(room, msg, box) {
    box.replaceChildren();
    box.hidden = !msg.needs_ack;
    if (!msg.needs_ack) return;
    const acks = Array.isArray(msg.acknowledged_by) ? msg.acknowledged_by : [];
    const late = msg.deadline && msg.deadline < Date.now() && !acks.length;
    if (room.overdue.has(msg.id) || late) {
      box.append(testid(el('span', 'badge badge-overdue', '! Overdue'), 'overdue-label'));
    }
    if (acks.length) {
      const who = acks.map((a) => `${nameOf(a.user)} (${hhmm(a.ts)})`).join(', ');
      box.append(testid(el('span', 'ack-done', `✓ Acknowledged by ${who}`), 'acknowledged-by'));
    } else {
      const by = msg.deadline ? ` by ${hhmm(msg.deadline)}` : '';
      box.append(el('span', 'ack-wait', `Needs acknowledgement${by}`));
    }
    const mine = acks.some((a) => isMe(a.user));
    if (!isMe(msg.from) && !mine) box.append(ackButton(room, msg));
    const err = room.ackErrors.get(msg.id);
    if (err) box.append(el('span', 'inline-error', err));
  }

  function ackButton(room, msg) {
    const button = testid(el('button', 'ack-button', 'Acknowledge'), 'ack-button');
    button.type = 'button';
    button.disabled = room.acking.has(msg.id);
    button.addEventListener('click', () => acknowledge(room, msg.id));
    return button;
  }

  function acknowledge(room, id) {
    room.ackErrors.delete(id);
    const frame = { type: 'acknowledge_message', room: room.name, id };
    if (!request(frame, { kind: 'acknowledge', room: room.name, id })) {
      room.ackErrors.set(id, 'Not connected; try again when connected.');
    } else {
      room.acking.add(id);
    }
    renderAck(room, id);
  }

  function onAcknowledgeFailed(room, id, text) {
    room.acking.delete(id);
    room.ackErrors.set(id, text);
    renderAck(room, id);
  }

  function onMessageAcknowledged(frame) {
    const room = roomOf(frame);
    const msg = room && room.messages.get(frame.id);
    if (!msg || !frame.by) return;
    const acks = Array.isArray(msg.acknowledged_by) ? msg.acknowledged_by : [];
    if (!acks.some((a) => a.user && a.user.id === frame.by.id)) {
      acks.push({ user: frame.by, ts: frame.ts });
    }
    msg.acknowledged_by = acks;
    if (isMe(frame.by)) room.acking.delete(frame.id);
    renderAck(room, frame.id);
  }

  // ---- sending -------------------------------------------------------

  function sendMessage(room, text, priority, needsAck) {
    const p = { cmid: newId(), room: room.name, text, priority, needsAck, state: 'sending' };
    p.item = buildPending(room, p);
    room.pending.set(p.cmid, p);
    room.view.list.append(p.item);
    transmit(room, p);
    scrollToBottom(room);
  }

  // Sends (or re-sends, with the same client_msg_id) a pending message.
  function transmit(room, p) {
    const frame = {
      type: 'send_message',
      room: room.name,
      text: p.text,
      priority: p.priority,
      client_msg_id: p.cmid,
    };
    if (p.needsAck) frame.needs_ack = true;
    if (new TextEncoder().encode(JSON.stringify(frame)).length > MAX_FRAME_BYTES) {
      // The server would close the connection for a frame this large.
      Object.assign(p, { state: 'failed', error: 'Too long to send.', ref: null });
      renderPending(p);
      return;
    }
    p.state = 'sending';
    p.error = null;
    p.ref = request(frame, { kind: 'send', room: room.name, cmid: p.cmid });
    renderPending(p);
  }

  function resendPending(room) {
    for (const p of room.pending.values()) {
      if (p.state === 'sending' && !(p.ref && state.refs.has(p.ref))) transmit(room, p);
    }
  }

  function buildPending(room, p) {
    const li = testid(el('li', 'msg pending mine'), 'pending-message');
    if (p.priority === 'urgent') li.classList.add('urgent');
    const head = el('div', 'msg-head');
    if (p.priority === 'urgent') head.append(el('span', 'badge badge-urgent', '⚠ Urgent'));
    head.append(el('span', 'msg-from', nameOf(state.me)));
    const status = testid(el('span', 'pending-status'), 'pending-status');
    head.append(status);
    const actions = el('div', 'pending-actions');
    li.append(head, el('div', 'msg-text', p.text), actions);
    p.status = status;
    p.actions = actions;
    p.roomRef = room;
    return li;
  }

  function renderPending(p) {
    p.item.classList.toggle('failed', p.state === 'failed');
    p.actions.replaceChildren();
    if (p.state === 'failed') {
      p.status.textContent = 'Not sent';
      p.actions.append(testid(el('span', 'inline-error', p.error), 'pending-error'));
      p.actions.append(pendingButton('Retry', 'retry-send', () => transmit(p.roomRef, p)));
      p.actions.append(pendingButton('Discard', 'discard-send', () => dropPending(p.roomRef, p)));
    } else if (p.state === 'sent') {
      p.status.textContent = 'Sent';
    } else {
      p.status.textContent = p.ref ? 'Sending…' : 'Waiting for connection…';
    }
  }

  function pendingButton(label, id, onClick) {
    const b = testid(el('button', 'link-button', label), id);
    b.type = 'button';
    b.addEventListener('click', onClick);
    return b;
  }

  function onAck(frame, what) {
    if (!what || what.kind !== 'send') return;
    const room = state.rooms.get(what.room);
    const p = room && room.pending.get(what.cmid);
    if (!p || typeof frame.id !== 'string') return;
    if (room.messages.has(frame.id)) {
      dropPending(room, p);
      return;
    }
    // Stored; it is shown in its place when its new_message arrives.
    p.state = 'sent';
    room.awaiting.set(frame.id, p.cmid);
    renderPending(p);
  }

  function onSendFailed(room, cmid, text, code) {
    const p = room.pending.get(cmid);
    if (!p) return;
    p.state = 'failed';
    p.error = text;
    p.ref = null;
    p.item.dataset.errorCode = code || '';
    renderPending(p);
  }

  // A message that arrives replaces the pending copy it stands for.
  function settlePending(room, msg) {
    const cmid = room.awaiting.get(msg.id) || msg.client_msg_id;
    const p = cmid && room.pending.get(cmid);
    room.awaiting.delete(msg.id);
    if (p) dropPending(room, p);
  }

  function dropPending(room, p) {
    room.pending.delete(p.cmid);
    p.item.remove();
  }

  // ---- history -------------------------------------------------------

  function loadEarlier(room) {
    if (room.loadingHistory) return;
    const frame = { type: 'history', room: room.name, limit: PAGE };
    if (room.order.length) frame.before = room.order[0];
    if (!request(frame, { kind: 'history', room: room.name })) return;
    room.loadingHistory = true;
    room.view.historyError.hidden = true;
    renderLoadEarlier(room);
  }

  function onHistory(frame) {
    const room = roomOf(frame);
    if (!room) return;
    room.loadingHistory = false;
    room.more = !!frame.more;
    addMessages(room, Array.isArray(frame.messages) ? frame.messages : [], 'prepend', false);
    renderLoadEarlier(room);
  }

  function onHistoryFailed(room, text) {
    room.loadingHistory = false;
    room.view.historyError.textContent = `Could not load earlier messages: ${text}`;
    room.view.historyError.hidden = false;
    renderLoadEarlier(room);
  }

  function renderLoadEarlier(room) {
    const b = room.view.earlier;
    b.hidden = !room.more;
    b.disabled = room.loadingHistory;
    b.textContent = room.loadingHistory ? 'Loading…' : 'Load earlier messages';
  }

  // ---- read marks and receipts ---------------------------------------

  // Sends mark_read for the newest shown message, at most once a second.
  function markReadSoon(room) {
    if (room.markTimer) return;
    const wait = Math.max(0, room.lastMarkAt + READ_THIN_MS - Date.now());
    room.markTimer = setTimeout(() => {
      room.markTimer = null;
      markRead(room);
    }, wait);
  }

  function markRead(room) {
    const visible = room.name === state.current && document.visibilityState === 'visible';
    const newest = room.order[room.order.length - 1];
    if (!visible || !newest || newest === room.lastRead || !state.rooms.has(room.name)) return;
    const frame = { type: 'mark_read', room: room.name, up_to: newest };
    if (!request(frame, { kind: 'mark_read', room: room.name })) return;
    room.lastRead = newest;
    room.lastMarkAt = Date.now();
  }

  // "Seen by …" under the message each other member has read up to.
  function renderReceipts(room) {
    room.view.list.querySelectorAll('.msg-receipt').forEach((n) => n.remove());
    const byMessage = new Map();
    for (const r of room.reads.values()) {
      if (!r.user || isMe(r.user) || !room.items.has(r.up_to)) continue;
      if (!byMessage.has(r.up_to)) byMessage.set(r.up_to, []);
      byMessage.get(r.up_to).push(nameOf(r.user));
    }
    for (const [id, names] of byMessage) {
      const line = testid(el('div', 'msg-receipt', `Seen by ${names.join(', ')}`), 'read-receipt');
      room.items.get(id).append(line);
    }
  }

  // ---- typing --------------------------------------------------------

  function onLocalTyping() {
    const room = state.rooms.get(state.current);
    if (!room || !state.ready) return;
    if (!$('composer-text').value.trim()) {
      stopTyping(true);
      return;
    }
    const t = state.typing;
    const now = Date.now();
    if (!t.active || t.room !== room.name || now - t.sentAt >= TYPING_THIN_MS) {
      if (t.active && t.room !== room.name) stopTyping(true);
      if (send({ type: 'typing', room: room.name, active: true })) {
        Object.assign(t, { active: true, room: room.name, sentAt: now });
      }
    }
    clearTimeout(t.idle);
    t.idle = setTimeout(() => stopTyping(true), TYPING_IDLE_MS);
  }

  function stopTyping(tell) {
    const t = state.typing;
    clearTimeout(t.idle);
    if (t.active && tell) send({ type: 'typing', room: t.room, active: false });
    t.active = false;
    t.room = null;
  }

  function onRemoteTyping(frame) {
    const room = roomOf(frame);
    if (!room || !frame.user || isMe(frame.user)) return;
    dropRemoteTyping(room, frame.user.id);
    if (frame.active) {
      const timer = setTimeout(() => dropRemoteTyping(room, frame.user.id), TYPING_EXPIRE_MS);
      room.typing.set(frame.user.id, { user: frame.user, timer });
    }
    renderTyping();
  }

  function dropRemoteTyping(room, userId) {
    const entry = room.typing.get(userId);
    if (!entry) return;
    clearTimeout(entry.timer);
    room.typing.delete(userId);
    if (room.name === state.current) renderTyping();
  }

  function clearRemoteTyping(room) {
    for (const entry of room.typing.values()) clearTimeout(entry.timer);
    room.typing.clear();
  }

  function renderTyping() {
    const room = state.rooms.get(state.current);
    const names = room ? [...room.typing.values()].map((e) => nameOf(e.user)) : [];
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = 'Several people are typing…';
    $('typing').textContent = text;
  }

  // ---- rendering -----------------------------------------------------

  function renderRoomList() {
    const list = $('room-list');
    list.replaceChildren();
    let unread = 0;
    for (const room of state.rooms.values()) {
      unread += room.unread;
      list.append(roomListItem(room));
    }
    $('no-rooms').hidden = state.rooms.size > 0;
    document.title = unread ? `(${unread}) Ward` : 'Ward';
  }

  function roomListItem(room) {
    const li = el('li');
    const button = testid(el('button', 'room-link'), 'room-link');
    button.type = 'button';
    button.dataset.room = room.name;
    button.title = room.name;
    if (room.name === state.current) button.setAttribute('aria-current', 'true');
    button.append(el('span', 'room-name', room.name));
    if (room.unread) {
      const badge = testid(el('span', 'unread'), 'unread-count');
      if (room.urgentUnread) badge.classList.add('unread-urgent');
      badge.textContent = room.urgentUnread ? `⚠ ${room.unread}` : String(room.unread);
      const urgent = room.urgentUnread ? `, ${room.urgentUnread} urgent` : '';
      badge.setAttribute('aria-label', `${room.unread} unread${urgent}`);
      button.append(badge);
    }
    button.addEventListener('click', () => switchRoom(room.name));
    li.append(button);
    return li;
  }

  function renderCurrent() {
    const room = state.rooms.get(state.current);
    $('empty-state').hidden = !!room;
    $('room-view').hidden = !room;
    $('presence').hidden = !room;
    if (!room) {
      $('room-body').replaceChildren();
      return;
    }
    $('room-title').textContent = room.name;
    $('room-body').replaceChildren(room.view.scroller);
    restoreScroll(room);
    renderRoomMeta(room);
    renderTyping();
    markReadSoon(room);
  }

  function renderRoomMeta(room) {
    if (room.name !== state.current) return;
    const n = room.memberCount;
    $('member-count').textContent = room.joined ? `${n} ${n === 1 ? 'member' : 'members'}` : 'Joining…';
    const list = $('presence-list');
    list.replaceChildren();
    const members = [...room.members.values()].sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
    for (const user of members) {
      const li = testid(el('li', 'member'), 'member');
      li.dataset.user = user.id;
      const dot = el('span', 'presence-dot');
      dot.setAttribute('aria-hidden', 'true');
      li.append(dot, el('span', 'member-name', nameOf(user)));
      if (isMe(user)) li.append(el('span', 'muted', ' (you)'));
      list.append(li);
    }
    $('presence-title').textContent = `In this room (${members.length})`;
    $('people-toggle').textContent = `People (${members.length})`;
  }

  // ---- scrolling -----------------------------------------------------

  function isAtBottom(room) {
    const s = room.view.scroller;
    return !s.isConnected || s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function scrollToBottom(room) {
    const s = room.view.scroller;
    room.stick = true;
    if (s.isConnected) s.scrollTop = s.scrollHeight;
    else room.scroll = null;
  }

  // A reader at the newest message stays there when the window resizes.
  function keepBottomOnResize() {
    const observer = new ResizeObserver(() => {
      const room = state.rooms.get(state.current);
      if (room && room.stick) room.view.scroller.scrollTop = room.view.scroller.scrollHeight;
    });
    observer.observe($('room-body'));
  }

  function scrollState(room) {
    const s = room.view.scroller;
    return { atBottom: isAtBottom(room), top: s.scrollTop };
  }

  function restoreScroll(room) {
    const s = room.view.scroller;
    const saved = room.scroll;
    if (!saved || saved.atBottom) s.scrollTop = s.scrollHeight;
    else s.scrollTop = saved.top;
  }

  // ---- screens and drawers -------------------------------------------

  function showSignIn(error) {
    state.identity = null;
    clearTimer('retry');
    clearTimer('countdown');
    dropSocket();
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage disabled.
    }
    $('signin-token').value = '';
    state.everWelcomed = false;
    setConn('offline');
    $('app').hidden = true;
    $('me-box').hidden = true;
    $('rooms-toggle').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = error || '';
    $('signin-error').hidden = !error;
    $(error ? 'signin-token' : 'signin-user').focus();
  }

  function showApp() {
    $('signin').hidden = true;
    $('signin-error').hidden = true;
    $('app').hidden = false;
    $('me-box').hidden = false;
    $('rooms-toggle').hidden = false;
    renderRoomList();
    renderCurrent();
    $(state.current ? 'composer-text' : 'join-room').focus();
  }

  function toggleDrawer(button, className) {
    const open = !$('app').classList.contains(className);
    closeDrawers();
    $('app').classList.toggle(className, open);
    button.setAttribute('aria-expanded', String(open));
    if (open && className === 'show-sidebar') $('join-room').focus();
  }

  function closeDrawers() {
    $('app').classList.remove('show-sidebar', 'show-presence');
    $('rooms-toggle').setAttribute('aria-expanded', 'false');
    $('people-toggle').setAttribute('aria-expanded', 'false');
  }

  // ---- forms ---------------------------------------------------------

  function onSignIn(ev) {
    ev.preventDefault();
    const user = $('signin-user').value.trim();
    const name = $('signin-name').value.trim();
    const token = $('signin-token').value.trim();
    const problem = signInProblem(user, name, token);
    $('signin-error').textContent = problem || '';
    $('signin-error').hidden = !problem;
    if (problem) return;
    writeJson(localStorage, IDENTITY_KEY, { user, name });
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // Storage disabled: the token lives in memory only.
    }
    state.identity = token ? { token } : { user, name };
    state.attempt = 0;
    connect();
  }

  function signInProblem(user, name, token) {
    if (token) return null;
    if (!NAME_RULE.test(user)) {
      return 'User id: 1 to 64 characters, letters, digits or . _ : - (or give a token).';
    }
    if ([...name].length > 100) return 'Display name: at most 100 characters.';
    return null;
  }

  function onJoin(ev) {
    ev.preventDefault();
    const input = $('join-room');
    const name = input.value.trim();
    const error = $('join-error');
    error.hidden = true;
    if (!NAME_RULE.test(name)) {
      error.textContent = 'Room name: 1 to 64 characters, letters, digits or . _ : -';
      error.hidden = false;
      input.focus();
      return;
    }
    input.value = '';
    if (!state.rooms.has(name)) {
      joinRoom(addRoom(name));
      saveRooms();
    }
    switchRoom(name);
  }

  function onSend(ev) {
    ev.preventDefault();
    const room = state.rooms.get(state.current);
    const box = $('composer-text');
    const text = box.value;
    if (!room || !text.trim()) return;
    const urgent = $('prio-urgent').checked;
    sendMessage(room, text, urgent ? 'urgent' : 'normal', $('needs-ack').checked);
    stopTyping(true);
    box.value = '';
    // Urgent is a deliberate choice each time.
    $('prio-normal').checked = true;
    $('needs-ack').checked = false;
    box.focus();
  }

  function onComposerKey(ev) {
    if (ev.key !== 'Enter' || ev.shiftKey || ev.isComposing) return;
    ev.preventDefault();
    $('composer').requestSubmit();
  }

  function onSignOut() {
    stopTyping(true);
    showSignIn(null);
    resetRooms();
    state.me = null;
  }

  function prefill() {
    const saved = readJson(localStorage, IDENTITY_KEY);
    if (saved && typeof saved.user === 'string') $('signin-user').value = saved.user;
    if (saved && typeof saved.name === 'string') $('signin-name').value = saved.name;
    try {
      $('signin-token').value = sessionStorage.getItem(TOKEN_KEY) || '';
    } catch {
      // Storage disabled.
    }
  }

  function wire() {
    $('signin-form').addEventListener('submit', onSignIn);
    $('join-form').addEventListener('submit', onJoin);
    $('composer').addEventListener('submit', onSend);
    $('composer-text').addEventListener('keydown', onComposerKey);
    $('composer-text').addEventListener('input', onLocalTyping);
    $('prio-urgent').addEventListener('change', () => {
      $('needs-ack').checked = true;
    });
    $('prio-normal').addEventListener('change', () => {
      $('needs-ack').checked = false;
    });
    $('leave-room').addEventListener('click', () => {
      const room = state.rooms.get(state.current);
      if (room) leaveRoom(room);
    });
    $('retry-now').addEventListener('click', () => {
      state.attempt = 0;
      connect();
    });
    $('sign-out').addEventListener('click', onSignOut);
    $('sign-out-narrow').addEventListener('click', onSignOut);
    $('rooms-toggle').addEventListener('click', (e) => toggleDrawer(e.currentTarget, 'show-sidebar'));
    $('people-toggle').addEventListener('click', (e) => toggleDrawer(e.currentTarget, 'show-presence'));
    document.addEventListener('keydown', (e) => {
      if (e.key !== 'Escape') return;
      const app = $('app').classList;
      const open = app.contains('show-sidebar') || app.contains('show-presence');
      const inside = document.activeElement && document.activeElement.closest('#sidebar, #presence');
      closeDrawers();
      // Focus leaves a drawer that has just closed.
      if (open && inside) $('composer-text').focus();
    });
    document.addEventListener('visibilitychange', onVisible);
    window.addEventListener('online', () => {
      if (state.identity && !state.socket) connect();
    });
  }

  function onVisible() {
    if (document.visibilityState !== 'visible') return;
    const room = state.rooms.get(state.current);
    if (!room) return;
    room.unread = 0;
    room.urgentUnread = 0;
    renderRoomList();
    markReadSoon(room);
  }

  function start() {
    state.conn = { kind: 'offline' };
    wire();
    keepBottomOnResize();
    prefill();
    renderConn();
    $('signin-user').focus();
  }

  start();
})();
