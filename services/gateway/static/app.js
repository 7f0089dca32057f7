// Wiring: identity (localStorage, or a token from the application: signin.js), the connection, the join sequence and recovery after a
// reconnect, typing, invitations, and the user's actions. Sending the outbox is outbox.js's,
// changing messages changes.js's, read state reading.js's, paging back paging.js's.
import { Connection } from "./connection.js";
import { messageChanges } from "./changes.js";
import { outboxSender } from "./outbox.js";
import { historyPaging } from "./paging.js";
import { readState } from "./reading.js";
import { forgetToken, keepToken, provisionalName, takeToken, tokenRefresher } from "./signin.js";
import { MAIN, Store } from "./store.js";
import { View } from "./view.js";
import { checkBody, clientId, dmRoomName, errorText, isClientId, isValidRoom, normalName, usernameProblem } from "./format.js";

const MUTE_SECONDS = 600; // the menu's "Mute 10 min"
// what each moderation event (2.4) did, said after its ack
const MODERATED = {
  mute: (user, room) => `${user} is muted in #${room} for 10 minutes.`,
  unmute: (user, room) => `${user} can chat in #${room} again.`,
  kick: (user, room) => `${user} was removed from #${room}.`,
  ban: (user, room) => `${user} is banned from #${room}.`,
  unban: (user, room) => `${user} may join #${room} again.`,
};

const ID_KEY = "roomcast.identity"; // localStorage: {username, session}, shared by every tab
// A signed-in page's first join is refused with these when its token will never do (2.4).
const TOKEN_REFUSALS = new Set(["unauthorized", "username_taken", "username_mismatch", "invalid", "forbidden"]);
const SIGN_IN_EXPIRED = "Your sign-in has expired. Open the chat again from the application that sent you here to continue.";
const DISCONNECTED_BY_APP = "The application disconnected you from the chat. Reload the page to come back.";
const TAB_KEY = "roomcast.tab"; // sessionStorage: this tab's rooms, current room and unsent messages

const TYPING_EVERY_MS = 2000;
const KEEP_MAX = 2000; // messages kept per room before the oldest are trimmed
const KEEP_AFTER_TRIM = 1500;

let store = new Store();
let identity = null; // {username, session} when anonymous, {username, token} when signed in
let tokenPage = false; // signed in by a token once: the application may send newer ones
let conn = null;
let everOpen = false;
let loggingIn = false; // the first userJoin of a name typed in the form is in flight
// The server may know this name as ours although this page holds no session for it yet (a
// userJoin whose answer was lost with its socket), and a name is kept for its session a while
// after its connection goes (PROTOCOL.md 2.2): then `username_taken` means "still held by your
// previous connection", not "someone else's". Such a page keeps its name and retries.
let nameMaybeOurs = false;
let takenRetries = 0;
let takenTimer = null;
let renderQueued = false;
let persistTimer = null;
const lastTypingSent = new Map();

/** The room named by `/?room=ROOM` in the address bar, if any. */
function linkedRoomParam() {
  return new URLSearchParams(location.search).get("room");
}

// ---- storage -----------------------------------------------------------------------------------

function loadIdentity() {
  try {
    const value = JSON.parse(localStorage.getItem(ID_KEY) || "null");
    if (value && typeof value.username === "string" && !usernameProblem(value.username)) {
      return { username: value.username, session: typeof value.session === "string" && value.session ? value.session : null };
    }
  } catch {
    /* storage unavailable or corrupt: ask for a name */
  }
  return null;
}

function saveIdentity() {
  if (identity?.token) return; // a token stays in this tab (signin.js), never in localStorage
  try {
    localStorage.setItem(ID_KEY, JSON.stringify({ username: identity.username, session: identity.session }));
  } catch {
    /* private mode: this tab still works */
  }
}

function clearIdentity() {
  try {
    const stored = loadIdentity();
    if (!identity?.token && (!stored || stored.username === identity?.username)) localStorage.removeItem(ID_KEY);
    sessionStorage.removeItem(TAB_KEY);
  } catch {
    /* ignore */
  }
}

function persistTab(now = false) {
  clearTimeout(persistTimer);
  const write = () => {
    if (!store.me) return;
    try {
      sessionStorage.setItem(TAB_KEY, JSON.stringify({ username: store.me, ...store.snapshot() }));
    } catch {
      /* ignore */
    }
  };
  if (now) write();
  else persistTimer = setTimeout(write, 100);
}

function restoreTab() {
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(TAB_KEY) || "null");
  } catch {
    saved = null;
  }
  if (!saved || saved.username !== store.me) return;
  for (const r of Array.isArray(saved.rooms) ? saved.rooms : []) {
    if (r && isValidRoom(r.name)) store.ensureRoom(r.name, { dmWith: typeof r.dmWith === "string" ? r.dmWith : undefined });
  }
  if (isValidRoom(saved.current) && store.room(saved.current)) store.setCurrent(saved.current);
  for (const m of Array.isArray(saved.outbox) ? saved.outbox : []) {
    if (m && isClientId(m.id) && typeof m.body === "string" && store.room(m.room)) {
      store.addPending(m.room, { id: m.id, body: m.body, time: Number(m.time) || Date.now(), seq: Number(m.seq) || undefined });
    }
  }
}

// ---- rendering ---------------------------------------------------------------------------------

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  const run = () => {
    renderQueued = false;
    if (document.body.classList.contains("in-chat")) {
      view.render(store, store.takeDirty());
      reading.viewed();
      paging.fillViewport();
      trimRooms();
    }
  };
  if (document.hidden) setTimeout(run, 200);
  else requestAnimationFrame(run);
}

function trimRooms() {
  for (const room of store.rooms.values()) {
    if (room.items.length <= KEEP_MAX || room.loadingOlder) continue;
    // The room in view is trimmed only while its reader follows the bottom.
    if (room.name === store.current && !view.isFollowingBottom()) continue;
    store.trimOldest(room.name, KEEP_AFTER_TRIM);
  }
}

function subscribeStore() {
  store.subscribe((what) => {
    scheduleRender();
    if (what === "rooms" || what === "outbox") persistTab();
  });
}

function setUrl(room) {
  const target = room === MAIN ? "/" : `/?room=${encodeURIComponent(room)}`;
  if (location.pathname + location.search !== target) history.replaceState(null, "", target);
}

function switchTo(room) {
  if (room !== store.current) {
    view.tools.endEdit();
    reading.flush();
  }
  store.setCurrent(room);
  setUrl(room);
  view.setComposerError(null);
  view.forceBottom = true;
  persistTab(true);
}

// ---- session and connection --------------------------------------------------------------------

function wsUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws?batch=1`;
}

function beginSession(username) {
  store = new Store();
  subscribeStore();
  store.me = username;
  store.ensureRoom(MAIN);
  restoreTab();
  const linkedRoom = linkedRoomParam();
  if (linkedRoom) {
    if (isValidRoom(linkedRoom)) {
      store.ensureRoom(linkedRoom);
      store.setCurrent(linkedRoom);
    } else {
      setUrl(store.current);
      setTimeout(() => view.notice(`“${linkedRoom}” is not a valid room name, so you're in #main instead.`, { kind: "error" }), 0);
    }
  }
  everOpen = false;
  conn = new Connection({ url: wsUrl(), onOpen, onEvent, onStatus, onClose });
  conn.start();
}

function enterChat() {
  view.showChat(store.me, { signedIn: Boolean(identity?.token) });
  setUrl(store.current);
  store.touch("rooms");
  store.touch("messages", store.current);
  store.touch("users");
  scheduleRender();
}

function endSession() {
  conn?.stop();
  conn = null;
  clearTimeout(takenTimer);
  takenRetries = 0;
  nameMaybeOurs = false;
  outbox.stop();
  lastTypingSent.clear();
}

function onStatus(status) {
  if (status.state === "open") everOpen = true;
  if (loggingIn) {
    if (status.state === "waiting") {
      const secs = Math.max(1, Math.ceil((status.retryAt - Date.now()) / 1000));
      view.setLoginBusy(true, `Can't reach the chat server. Retrying in ${secs} s…`);
    } else if (status.state === "connecting") {
      view.setLoginBusy(true, "Connecting…");
    }
    return;
  }
  view.setConnection({ ...status, everOpen });
}

function onOpen(gen) {
  joinAll(gen);
}

function onClose(code) {
  if (code === 4003) {
    // The application's backend disconnected this user (2.4): reconnecting by itself would undo
    // what the application asked for, so the page stops and says so.
    signInEnded(DISCONNECTED_BY_APP);
    return false;
  }
  if (code !== 4001) return true;
  // The token expired (2.4): joining again with it would only be refused, so stop here; the
  // application's next token (signin.js) signs in again.
  signInEnded(SIGN_IN_EXPIRED);
  return false;
}

/** A signed-in session that cannot go on: the chat stays readable, with the reason above it. */
function signInEnded(text) {
  endSession();
  view.setEnded(text);
}

/** Signs in with `token`: the first join sends it instead of a name and session. */
function signIn(token) {
  identity = { username: provisionalName(token), token };
  tokenPage = true;
  keepToken(token);
  refresher.watch(token);
  beginSession(identity.username);
}

/** A newer token from the application (signin.js): hand it to the server with `refresh`. */
async function tokenArrived(token) {
  if (!tokenPage) return; // only a page the application signed in takes its tokens
  if (!conn) {
    signIn(token); // the old one expired: sign in again, without leaving the chat
    enterChat();
    view.setConnection({ state: "connecting", everOpen: false });
    return;
  }
  const previous = identity.token;
  identity.token = token;
  keepToken(token);
  refresher.watch(token);
  // A socket already signed in takes it by `refresh`; else the join in flight hands it on once
  // admitted (joinRoom), or the next join sends it.
  if (conn.isOpen && store.room(MAIN)?.joinedGen === conn.generation) sendRefresh(token, previous);
}

async function sendRefresh(token, previous) {
  try {
    await conn.request("refresh", { token }, { timeout: 10000 });
  } catch (err) {
    if (err.code === "offline" || err.code === "timeout") return; // the next join sends it
    if (identity?.token === token) identity.token = previous; // refused: keep the one that works
    keepToken(identity.token);
    view.notice(errorText(err.code, err.message), { kind: "error" });
  }
}

async function joinAll(gen) {
  // main first: the first userJoin fixes the connection's username and proves the session.
  try {
    await joinRoom(MAIN, gen);
  } catch (err) {
    if (!conn || gen !== conn.generation) return;
    firstJoinFailed(err, gen);
    return;
  }
  if (loggingIn) {
    loggingIn = false;
    view.setLoginBusy(false);
    enterChat();
    view.setConnection({ state: "open", everOpen: true });
  }
  const others = [...store.rooms.keys()].filter((name) => name !== MAIN);
  await Promise.all(others.map((name) => joinRoom(name, gen).catch((err) => joinFailed(name, err, gen))));
}

async function joinRoom(name, gen = conn?.generation) {
  if (!conn?.isOpen) throw Object.assign(new Error("not connected"), { code: "offline" });
  const room = store.ensureRoom(name);
  // Recovery: every message new or changed after the highest rev held (2.3), else after the
  // newest message held (a server without revs).
  const sinceRev = room.historyLoaded ? store.maxRev(name) : 0;
  const since = room.historyLoaded && !sinceRev ? store.lastConfirmedId(name) : null;
  const recovering = Boolean(sinceRev || since);
  const data = identity?.token ? { token: identity.token, room: name } : { username: store.me, room: name };
  if (identity?.session) data.session = identity.session;
  if (sinceRev) data.sinceRev = sinceRev;
  else if (since) data.since = since;
  let historySeen;
  room.recovery = recovering ? { history: new Promise((resolve) => { historySeen = resolve; }), resolve: null } : null;
  if (room.recovery) room.recovery.resolve = historySeen;
  room.joining = true;
  let ack;
  const sent = conn.isOpen;
  try {
    ack = await conn.request("userJoin", data, { timeout: 15000 });
  } catch (err) {
    // a first join whose answer never came may have been admitted: the name may be ours now
    if (name === MAIN && sent && (err.code === "timeout" || err.code === "offline")) nameMaybeOurs = true;
    throw err;
  } finally {
    room.joining = false;
  }
  if (!conn || gen !== conn.generation) throw Object.assign(new Error("stale"), { code: "offline" });
  nameMaybeOurs = true;
  if (data.token && identity.token !== data.token) sendRefresh(identity.token, data.token); // came meanwhile
  if (typeof ack.username === "string" && ack.username && ack.username !== store.me) {
    store.me = ack.username; // the name the token signed in (2.4)
    identity.username = ack.username;
    if (!loggingIn) view.showChat(store.me, { signedIn: true });
  }
  if (takenRetries) {
    takenRetries = 0;
    view.notice(`You're back as “${store.me}”.`, { kind: "success", timeout: 4000 });
  }
  if (typeof ack.session === "string" && ack.session && ack.session !== identity.session) {
    identity.session = ack.session;
    saveIdentity();
  } else if (!loadIdentity()) {
    saveIdentity();
  }
  room.joinedGen = gen;
  if (Boolean(room.moderates) !== (ack.moderates === true)) {
    room.moderates = ack.moderates === true; // the owner, or a moderator (2.4)
    store.touch("users", name);
  }
  reading.joined(name, ack);
  if (recovering && ack.recovered === false) paging.bridgeGap(name, room.recovery, gen);
  outbox.flush();
  return ack;
}

function firstJoinFailed(err, gen) {
  const code = err.code;
  if (identity?.token && TOKEN_REFUSALS.has(code)) {
    tokenRefused(err);
    return;
  }
  if (code === "unauthorized") {
    // ROOMCAST_AUTH=token: nobody chats under a name alone
    endSession();
    identity = null;
    loggingIn = false;
    view.showLogin({ name: store.me, error: "This chat is for signed-in users only. Open it from the application you use it with: its link signs you in.", intro: loginIntro() });
    return;
  }
  if (code === "username_taken" && (identity?.session || nameMaybeOurs)) {
    nameHeld(gen);
    return;
  }
  if (code === "username_taken" || code === "invalid" || code === "username_mismatch") {
    const name = store.me;
    const hadSession = Boolean(identity?.session);
    endSession();
    clearIdentity();
    identity = null;
    loggingIn = false;
    const error = code === "username_taken"
      ? errorText("username_taken", err.message, { username: name })
      : hadSession
        ? `Your saved name “${name}” could not be restored (the server no longer accepts its session). Please pick a name.`
        : `The server did not accept “${name}”: ${err.message || "invalid name"}. Please pick another name.`;
    view.showLogin({ name, error, intro: loginIntro() });
    return;
  }
  if (code === "timeout") {
    conn.restart("join timed out");
    return;
  }
  if (code === "offline") return; // the reconnect loop will try again
  // unavailable, internal, or anything else transient: try the join again shortly.
  if (!loggingIn) view.notice(errorText(code, err.message), { kind: "error" });
  else view.setLoginBusy(true, errorText(code, err.message));
  setTimeout(() => conn && gen === conn.generation && conn.isOpen && joinAll(gen), 2000 + Math.random() * 2000);
}

/**
 * A reconnect whose name is refused `username_taken`: the server still holds the name for the
 * previous connection (it has not noticed it died yet, or keeps it for its session). Never
 * forget the session for that: say so, and try again with a growing, jittered pause.
 */
function nameHeld(gen) {
  const window = Math.min(30000, 2000 * 2 ** takenRetries);
  const delay = Math.round(window / 2 + Math.random() * (window / 2));
  takenRetries = Math.min(takenRetries + 1, 8);
  const secs = Math.max(1, Math.round(delay / 1000));
  const text = `The name “${store.me}” is still held by your previous connection. Trying again in ${secs} s…`;
  if (loggingIn) view.setLoginBusy(true, text);
  else view.notice(text, { kind: "error", timeout: Math.max(4000, delay) });
  clearTimeout(takenTimer);
  takenTimer = setTimeout(() => conn && gen === conn.generation && conn.isOpen && joinAll(gen), delay);
}

function tokenRefused(err) {
  forgetToken();
  refresher.stop();
  const text = err.code === "unauthorized"
    ? `Your sign-in link has expired or is not valid (${err.message || "refused"}). Open the chat again from the application that sent you here.`
    : errorText(err.code, err.message, { username: store.me });
  if (!loggingIn) {
    signInEnded(text);
    return;
  }
  endSession();
  identity = null;
  tokenPage = false;
  loggingIn = false;
  view.showLogin({ name: "", error: text, intro: "Sign-in failed. You can still pick a name to chat without signing in." });
}

function joinFailed(name, err, gen) {
  if (!conn || gen !== conn.generation) return;
  const code = err.code;
  if (code === "offline") return;
  if (code === "timeout") {
    conn.restart("join timed out");
    return;
  }
  if (code === "unavailable" || code === "internal") {
    setTimeout(() => conn && gen === conn.generation && conn.isOpen && store.room(name) && joinRoom(name, gen).catch((e) => joinFailed(name, e, gen)), 3000 + Math.random() * 2000);
    return;
  }
  view.notice(errorText(code, err.message, { room: name }), { kind: "error" });
  if (name !== MAIN) {
    store.removeRoom(name);
    setUrl(store.current);
  }
}

// ---- server events -----------------------------------------------------------------------------

function onEvent(msg) {
  const { event, data } = msg;
  const roomName = typeof msg.room === "string" ? msg.room : data?.room;
  switch (event) {
    case "msgHistory": {
      const room = store.room(roomName);
      if (!room || !Array.isArray(data)) return;
      if (room.recovery?.resolve) {
        room.recovery.resolve(data);
        room.recovery.resolve = null;
      }
      store.applyHistory(roomName, data);
      return;
    }
    case "activeUsers":
      store.setUsers(roomName, data);
      return;
    case "userJoin":
      store.userJoined(roomName, data?.username);
      return;
    case "userLeave":
      store.userLeft(roomName, data?.username);
      return;
    case "userTyping":
      store.setTyping(roomName, data?.username);
      return;
    case "updateChat": {
      const result = store.addServerMessage(roomName, data);
      if (result === "added" && roomName === store.current && data.username !== store.me) view.announceMessage(data);
      return;
    }
    case "editChat":
    case "deleteChat":
    case "react":
      store.applyChange(roomName, data);
      return;
    case "readMarker":
      reading.marker(roomName, data);
      return;
    case "newRoom":
      invited(data);
      return;
    case "kicked":
      kicked(roomName, data?.by);
      return;
    case "error":
      view.notice(errorText(data?.code, data?.message, { room: roomName }), { kind: "error" });
      return;
    default:
      // Unknown events are ignored, so a newer server can add some.
      return;
  }
}

function kicked(name, by) {
  // An owner, a moderator or the app took us out of the room (2.4): say so and close it (main
  // stays open: the next message there joins again, unless we are banned from it).
  const room = store.room(name);
  if (!room) return;
  view.notice(errorText("kicked", "", { room: name, by: typeof by === "string" ? by : "" }), { kind: "error", timeout: 8000 });
  if (name === MAIN) return; // its next message is refused not_joined and joins again
  store.removeRoom(name);
  if (store.current === name) switchTo(MAIN);
  else setUrl(store.current);
}

function invited(data) {
  if (!data || typeof data.room !== "string" || !isValidRoom(data.room) || typeof data.username !== "string") return;
  if (data.username2 !== store.me) return; // not for us (our own invitation echoed back, if ever)
  store.addInvite(store.current, { from: data.username, room: data.room, url: typeof data.url === "string" ? data.url : "" });
  const existing = store.room(data.room);
  if (existing && !existing.dmWith) store.ensureRoom(data.room, { dmWith: data.username });
  view.notice(`${data.username} wants to chat with you privately: see the invitation in the messages.`, { kind: "info", timeout: 8000 });
}

// ---- user actions ------------------------------------------------------------------------------

const handlers = {
  login(typed) {
    const name = normalName(typed);
    const problem = usernameProblem(name);
    if (problem) {
      view.setLoginError(problem);
      view.el["name-input"].focus();
      return;
    }
    identity = { username: name, session: null };
    loggingIn = true;
    view.setLoginError(null);
    view.setLoginBusy(true, "Connecting…");
    beginSession(name);
  },

  send(text) {
    if (view.tools.editing) {
      changes.submitEdit(text); // the composer keeps the text until the edit is saved
      return false;
    }
    const { body, problem } = checkBody(text);
    if (problem === "empty") return false;
    if (problem) {
      view.setComposerError(problem);
      return false;
    }
    view.setComposerError(null);
    store.addPending(store.current, { id: clientId(), body, time: Date.now() });
    lastTypingSent.delete(store.current);
    outbox.flush();
    return true;
  },

  typing() {
    const name = store.current;
    const room = store.room(name);
    if (!conn?.isOpen || !room || room.joinedGen !== conn.generation) return;
    const now = Date.now();
    if (now - (lastTypingSent.get(name) || 0) < TYPING_EVERY_MS) return;
    lastTypingSent.set(name, now);
    conn.request("userTyping", { username: store.me, room: name }, { timeout: 10000 }).catch(() => {});
  },

  selectRoom(name) {
    if (store.room(name)) switchTo(name);
  },

  async startDm(user) {
    if (user === store.me) {
      view.notice("That's you! Pick someone else to start a private chat.");
      return;
    }
    if (!conn?.isOpen) {
      view.notice("You're offline right now. Try again once the connection is back.", { kind: "error" });
      return;
    }
    const existing = store.dmRoomWith(user);
    if (existing) {
      switchTo(existing.name);
      if (!existing.users.includes(user)) invite(user, existing.name, { again: true });
      return;
    }
    const previous = store.current;
    for (let attempt = 0; attempt < 2; attempt += 1) {
      const name = dmRoomName(store.me, user);
      store.ensureRoom(name, { dmWith: user });
      switchTo(name);
      const gen = conn.generation;
      try {
        await joinRoom(name, gen);
      } catch (err) {
        joinFailed(name, err, gen);
        if (store.current === MAIN && previous !== MAIN && store.room(previous)) switchTo(previous);
        return;
      }
      const result = await invite(user, name, { quiet: true });
      if (result === "ok") return;
      // Refused: the room is of no use, leave it.
      conn?.request("userLeave", { room: name }).catch(() => {});
      store.removeRoom(name);
      switchTo(store.room(previous) ? previous : MAIN);
      if (result === "room_exists" && attempt === 0) continue;
      return;
    }
  },

  joinInvite(room, from) {
    if (!isValidRoom(room)) return;
    store.ensureRoom(room, { dmWith: from && from !== store.me ? from : undefined });
    switchTo(room);
    const r = store.room(room);
    if (!conn?.isOpen) {
      view.notice("You're offline; you will join when the connection is back.");
      return;
    }
    if (r.joinedGen === conn.generation || r.joining) return;
    const gen = conn.generation;
    joinRoom(room, gen).catch((err) => joinFailed(room, err, gen));
  },

  loadOlder: () => paging.loadOlder(),
  nearTop: () => paging.nearTop(),

  async moderate(action, user) {
    const room = store.current;
    if (!conn?.isOpen || !Object.hasOwn(MODERATED, action)) return;
    const data = { room, username: user };
    if (action === "mute") data.seconds = MUTE_SECONDS;
    try {
      await conn.request(action, data, { timeout: 10000 });
    } catch (err) {
      const text = err.code === "forbidden" ? `Only the owner of #${room} or a moderator can do that.` : errorText(err.code, err.message, { room });
      view.notice(text, { kind: "error" });
      return;
    }
    const banned = store.room(room)?.banned ?? new Set(); // what this page banned: nobody lists bans (2.4)
    if (action === "ban") banned.add(user);
    if (action === "unban") banned.delete(user);
    if (store.room(room)) store.room(room).banned = banned;
    store.touch("users", room);
    view.notice(MODERATED[action](user, room), { kind: "success", timeout: 5000 });
  },

  leaveRoom() {
    const name = store.current;
    if (name === MAIN) return;
    if (conn?.isOpen) conn.request("userLeave", { room: name }).catch(() => {});
    store.removeRoom(name);
    switchTo(MAIN);
  },

  retry(room, id) {
    store.setOutgoing(room, id, { status: "pending", error: null, sentOn: -1, retryAt: 0, retries: 0 });
    outbox.flush();
  },

  discard(room, id) {
    store.discard(room, id);
  },

  edit: (room, id) => changes.edit(room, id),
  editLast: () => changes.editLast(),
  cancelEdit: () => changes.cancelEdit(),
  delete: (room, id) => changes.delete(room, id),
  react: (room, id, detail) => changes.react(room, id, detail),

  switchName() {
    const unsent = store.unsent().length;
    if (unsent && !window.confirm(`${unsent} message(s) not sent yet will be lost. Switch name anyway?`)) return;
    view.tools.endEdit();
    endSession();
    clearIdentity();
    if (identity?.token) {
      forgetToken(); // "Sign out": this tab is anonymous from now on
      refresher.stop();
      tokenPage = false;
    }
    identity = null;
    loggingIn = false;
    store = new Store();
    setUrl(MAIN);
    view.showLogin({ name: "", error: null, intro: loginIntro() });
  },

  reconnectNow() {
    conn?.reconnectNow();
  },
};

async function invite(user, room, { again = false, quiet = false } = {}) {
  try {
    await conn.request("newRoom", { username2: user, room }, { timeout: 15000 });
    view.notice(again ? `Invitation sent to ${user} again.` : `Invitation sent to ${user}.`, { kind: "success" });
    return "ok";
  } catch (err) {
    if (!(quiet && err.code === "room_exists")) view.notice(errorText(err.code, err.message, { username: user, room }), { kind: "error" });
    return err.code;
  }
}

function loginIntro() {
  const room = linkedRoomParam();
  return room && isValidRoom(room) && room !== MAIN ? `You've been invited to #${room}. Pick a name to join.` : "Pick a name to start chatting.";
}

// ---- start -------------------------------------------------------------------------------------

const view = new View(handlers);
const changes = messageChanges({ store: () => store, conn: () => conn, view });
const reading = readState({ store: () => store, conn: () => conn });
const outbox = outboxSender({
  store: () => store,
  conn: () => conn,
  view,
  persist: () => persistTab(),
  rejoin: (room, gen) => joinRoom(room, gen).catch((e) => joinFailed(room, e, gen)),
});
// the HTTP reads take the session, or the token of a signed-in page, as the bearer (2.4)
const paging = historyPaging({ store: () => store, conn: () => conn, session: () => identity?.session || identity?.token, view });
const refresher = tokenRefresher(tokenArrived);

setInterval(() => store.pruneTyping(), 1000);

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && store.hiddenNew) {
    store.hiddenNew = 0;
    store.touch("rooms");
  }
  if (!document.hidden) reading.viewed();
});

window.addEventListener("pagehide", () => {
  if (conn) persistTab(true);
  reading.flush();
});

window.addEventListener("pageshow", (e) => {
  if (e.persisted) conn?.reconnectNow();
});

const token = takeToken();
if (token) {
  loggingIn = true;
  view.showLogin({ intro: "Signing you in…", busy: true });
  view.setLoginBusy(true, "Signing in…");
  signIn(token);
} else if ((identity = loadIdentity())) {
  beginSession(identity.username);
  enterChat();
  view.setConnection({ state: "connecting", everOpen: false });
} else {
  view.showLogin({ intro: loginIntro() });
}
