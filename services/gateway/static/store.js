// Client state: the rooms this page has joined, each room's timeline (deduplicated by message id,
// each copy replaced by a newer state of its message), active users, who is typing, read state
// and unread counts, and the outbox of messages not yet acknowledged.
// No DOM and no network here: app.js feeds events in, view.js reads the state out.
import { messageItem, newerState, revOf, takeState, validMessage } from "./message.js";

export const MAIN = "main";

const TYPING_MS = 4000;

function newRoom(name) {
  return {
    name,
    dmWith: null, // the other person, for a private two-person room this page knows about
    items: [], // timeline: confirmed messages (by time), local items (invitations), then pending sends
    byKey: new Map(),
    users: [],
    typing: new Map(), // username -> expiry (ms, local clock)
    unread: 0,
    lastRead: null, // the user's read marker in the room (a message id), as the server keeps it
    newLineAfter: undefined, // where the "new messages" line goes: after this id, null = at the top
    seen: new Map(), // private rooms: the other member -> the last message id they read
    maxRev: 0, // the highest rev of this room held, for recovery with sinceRev
    historyLoaded: false,
    hasMore: null, // null: unknown yet, true: older pages may exist, false: reached the beginning
    loadingOlder: false,
    joinedGen: -1, // connection generation on which the room is joined
    joining: false,
    rev: 0,
  };
}

const isMsg = (item) => item.kind === "msg";
const isOutgoing = (item) => isMsg(item) && item.status !== "sent";

export class Store {
  constructor() {
    this.me = null;
    this.rooms = new Map();
    this.current = MAIN;
    this.hiddenNew = 0; // messages that arrived in the current room while the tab was hidden
    this._seq = 0;
    this._inviteSeq = 0;
    this._dirty = new Set();
    this._listeners = new Set();
  }

  // ---- change notification -------------------------------------------------------------------

  subscribe(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  /** Marks part of the state changed: "rooms", "users", "typing", "messages", "outbox". */
  touch(what, roomName) {
    if (what === "messages" && roomName) {
      const room = this.rooms.get(roomName);
      if (room) room.rev += 1;
    }
    this._dirty.add(what);
    for (const fn of this._listeners) fn(what, roomName);
  }

  takeDirty() {
    const dirty = this._dirty;
    this._dirty = new Set();
    return dirty;
  }

  // ---- rooms ---------------------------------------------------------------------------------

  room(name) {
    return this.rooms.get(name);
  }

  ensureRoom(name, { dmWith } = {}) {
    let room = this.rooms.get(name);
    if (!room) {
      room = newRoom(name);
      this.rooms.set(name, room);
      this.touch("rooms");
    }
    if (dmWith && !room.dmWith) {
      room.dmWith = dmWith;
      this.touch("rooms");
    }
    return room;
  }

  removeRoom(name) {
    if (name === MAIN || !this.rooms.has(name)) return;
    this.rooms.delete(name);
    if (this.current === name) this.current = MAIN;
    this.touch("rooms");
    this.touch("messages", this.current);
    this.touch("users");
    this.touch("outbox");
  }

  setCurrent(name) {
    const room = this.ensureRoom(name);
    const changed = this.current !== name;
    const left = this.rooms.get(this.current);
    if (changed && left) left.newLineAfter = undefined;
    this.current = name;
    if (room.unread) {
      // The line marks where the reader left off; it stays until they look elsewhere.
      if (room.lastRead) room.newLineAfter = room.lastRead;
      room.unread = 0;
      this.touch("rooms");
    }
    if (changed) {
      this.touch("rooms");
      this.touch("messages", name);
      this.touch("users");
      this.touch("typing");
    }
  }

  currentRoom() {
    return this.ensureRoom(this.current);
  }

  totalUnread() {
    let n = 0;
    for (const room of this.rooms.values()) n += room.unread;
    return n;
  }

  dmRoomWith(username) {
    for (const room of this.rooms.values()) if (room.dmWith === username) return room;
    return null;
  }

  // ---- messages ------------------------------------------------------------------------------

  /**
   * A message object from the server (live updateChat, msgHistory, an ack, an HTTP page).
   * Returns "added", "confirmed" (it matched one of our pending sends), "changed" (a later
   * state of a message we hold: its copy is replaced) or "duplicate".
   */
  addServerMessage(roomName, msg, { countUnread = true } = {}) {
    const room = this.rooms.get(roomName);
    if (!room || !validMessage(msg)) return "duplicate";
    this._noteRev(room, msg);
    const existing = room.byKey.get(`m:${msg.id}`);
    if (existing) {
      if (isOutgoing(existing)) {
        this._removeItem(room, existing);
        Object.assign(existing, { time: msg.time, username: msg.username, status: "sent", error: null });
        takeState(existing, msg);
        this._insertConfirmed(room, existing);
        this.touch("messages", roomName);
        this.touch("outbox");
        return "confirmed";
      }
      return this.applyChange(roomName, msg) ? "changed" : "duplicate";
    }
    const item = messageItem(roomName, msg);
    this._insertConfirmed(room, item);
    if (countUnread && msg.username !== this.me) {
      if (roomName !== this.current) {
        room.unread += 1;
        this.touch("rooms");
      } else if (globalThis.document?.hidden) {
        this.hiddenNew += 1;
        this.touch("rooms");
      }
    }
    if (room.typing.delete(msg.username)) this.touch("typing");
    this.touch("messages", roomName);
    return "added";
  }

  /**
   * A message edited, deleted or reacted to (live, or recovered with sinceRev): replaces our
   * copy by id when it is a later state. A message we do not hold is not added (it is older
   * than what we keep; paging back brings it in its current state). True when applied.
   */
  applyChange(roomName, msg) {
    const room = this.rooms.get(roomName);
    if (!room || !validMessage(msg)) return false;
    this._noteRev(room, msg);
    const item = room.byKey.get(`m:${msg.id}`);
    if (!item || isOutgoing(item) || !newerState(item, msg)) return false;
    takeState(item, msg);
    this.touch("messages", roomName);
    return true;
  }

  /** The highest rev held in the room: a rejoin asks for every change after it. */
  maxRev(roomName) {
    return this.rooms.get(roomName)?.maxRev || 0;
  }

  /**
   * msgHistory: the first for a room is its initial page; later ones (a rejoin with sinceRev or
   * since) are recovery: new messages and later states of changed ones, by rev. A changed
   * message older than the oldest we hold is left for paging back, so no hole opens above.
   */
  applyHistory(roomName, msgs) {
    const room = this.rooms.get(roomName);
    if (!room || !Array.isArray(msgs)) return [];
    const recovering = room.historyLoaded;
    const oldest = recovering && room.hasMore !== false ? this._oldestConfirmedTime(room) : null;
    const results = msgs.map((m) => {
      if (oldest !== null && validMessage(m) && m.time < oldest && !room.byKey.has(`m:${m.id}`)) {
        this._noteRev(room, m);
        return "duplicate";
      }
      return this.addServerMessage(roomName, m, { countUnread: recovering });
    });
    if (!room.historyLoaded) {
      room.historyLoaded = true;
      room.hasMore = msgs.length > 0 ? true : false;
      this.touch("messages", roomName);
    }
    return results;
  }

  /** An HTTP page of older messages (oldest first), to go before everything we hold. */
  prependOlder(roomName, msgs, limit) {
    const room = this.rooms.get(roomName);
    if (!room) return 0;
    const valid = msgs.filter(validMessage);
    for (const m of valid) if (room.byKey.has(`m:${m.id}`)) this.applyChange(roomName, m);
    const items = valid.filter((m) => !room.byKey.has(`m:${m.id}`)).map((m) => messageItem(roomName, m));
    room.items.unshift(...items);
    for (const item of items) room.byKey.set(item.key, item);
    room.hasMore = msgs.length >= limit;
    this.touch("messages", roomName);
    return items.length;
  }

  /** Messages that belong right before the message `anchorId` (a bridged gap), in order. */
  insertBefore(roomName, anchorId, msgs) {
    const room = this.rooms.get(roomName);
    if (!room) return 0;
    const anchor = room.byKey.get(`m:${anchorId}`);
    let at = anchor ? room.items.indexOf(anchor) : -1;
    let added = 0;
    for (const m of msgs) {
      if (!validMessage(m)) continue;
      if (at < 0 || room.byKey.has(`m:${m.id}`)) {
        this.addServerMessage(roomName, m);
        continue;
      }
      const item = messageItem(roomName, m);
      room.items.splice(at, 0, item);
      room.byKey.set(item.key, item);
      at += 1;
      added += 1;
      if (m.username !== this.me && roomName !== this.current) room.unread += 1;
    }
    if (added) {
      this.touch("messages", roomName);
      this.touch("rooms");
    }
    return added;
  }

  /**
   * A gap after a reconnect that could not be bridged: forget the confirmed messages before `id`
   * (the first message after the gap), so the timeline never shows a hole; paging back over HTTP
   * then brings the rest, in order.
   */
  dropBefore(roomName, id) {
    const room = this.rooms.get(roomName);
    if (!room) return;
    const at = room.items.findIndex((item) => item.key === `m:${id}`);
    if (at <= 0) return;
    const keep = room.items.filter((item, i) => i >= at || !(isMsg(item) && item.status === "sent"));
    room.items = keep;
    room.byKey = new Map(keep.map((item) => [item.key, item]));
    room.hasMore = true;
    this.touch("messages", roomName);
  }

  /** Keeps a long-lived busy room bounded: forgets the oldest messages (paging brings them back). */
  trimOldest(roomName, keep) {
    const room = this.rooms.get(roomName);
    if (!room || room.items.length <= keep) return false;
    const cut = room.items.length - keep;
    const dropped = room.items.slice(0, cut).filter((item) => !isOutgoing(item));
    if (!dropped.length) return false;
    const gone = new Set(dropped);
    room.items = room.items.filter((item) => !gone.has(item));
    for (const item of dropped) room.byKey.delete(item.key);
    room.hasMore = true;
    this.touch("messages", roomName);
    return true;
  }

  lastConfirmedId(roomName) {
    const room = this.rooms.get(roomName);
    if (!room) return null;
    for (let i = room.items.length - 1; i >= 0; i -= 1) {
      const item = room.items[i];
      if (isMsg(item) && item.status === "sent") return item.id;
    }
    return null;
  }

  oldestConfirmedId(roomName) {
    const room = this.rooms.get(roomName);
    if (!room) return null;
    for (const item of room.items) if (isMsg(item) && item.status === "sent") return item.id;
    return null;
  }

  /** Our own newest message in the room that can still be edited (Up arrow in an empty box). */
  lastOwnEditable(roomName) {
    const room = this.rooms.get(roomName);
    if (!room) return null;
    for (let i = room.items.length - 1; i >= 0; i -= 1) {
      const item = room.items[i];
      if (isMsg(item) && item.status === "sent" && item.username === this.me && !item.deleted) return item;
    }
    return null;
  }

  message(roomName, id) {
    const item = this.rooms.get(roomName)?.byKey.get(`m:${id}`);
    return item && isMsg(item) ? item : null;
  }

  hasMessage(roomName, id) {
    const item = this.rooms.get(roomName)?.byKey.get(`m:${id}`);
    return Boolean(item && item.status === "sent");
  }

  // ---- read state (PROTOCOL.md 2.3) ------------------------------------------------------------

  /**
   * A join ack's `lastRead` and `unread`. A room in view counts nothing (it is being read), but
   * shows the "new messages" line where the reader left off, the first time it is known.
   */
  setReadState(roomName, { lastRead, unread }) {
    const room = this.rooms.get(roomName);
    if (!room) return;
    room.lastRead = typeof lastRead === "string" ? lastRead : null;
    const count = Number.isSafeInteger(unread) && unread > 0 ? unread : 0;
    if (roomName === this.current) {
      if (count && room.lastRead && room.newLineAfter === undefined) room.newLineAfter = room.lastRead;
      this.touch("messages", roomName);
    } else {
      room.unread = count;
    }
    this.touch("rooms");
  }

  /**
   * The user's marker moved (our markRead's ack, or readMarker from another tab of the same
   * user). `unread` when the server said it; else counted from what we hold after the marker.
   */
  markedRead(roomName, id, unread) {
    const room = this.rooms.get(roomName);
    if (!room || typeof id !== "string") return;
    room.lastRead = id;
    if (roomName !== this.current) {
      const count = Number.isSafeInteger(unread) ? unread : this._unreadAfter(room, id);
      if (count !== null && count !== room.unread) {
        room.unread = count;
        this.touch("rooms");
      }
    }
  }

  /** A seen receipt in a private room: `username` has read up to message `id`. */
  seenBy(roomName, username, id) {
    const room = this.rooms.get(roomName);
    if (!room || typeof username !== "string" || typeof id !== "string" || username === this.me) return;
    room.seen.set(username, id);
    this.touch("messages", roomName);
  }

  // ---- the outbox: our own messages until the server acknowledges them -----------------------

  addPending(roomName, { id, body, time, seq }) {
    const room = this.ensureRoom(roomName);
    const item = { kind: "msg", key: `m:${id}`, id, username: this.me, body, time, room: roomName, status: "pending", error: null, rev: 0, seq: seq ?? ++this._seq, sentOn: -1, retryAt: 0 };
    if (item.seq > this._seq) this._seq = item.seq;
    room.items.push(item);
    room.byKey.set(item.key, item);
    this.touch("messages", roomName);
    this.touch("outbox");
    return item;
  }

  /** The ack of our updateChat: the stored message (its id is ours, unless the server chose one). */
  confirm(roomName, clientId, stored) {
    const room = this.rooms.get(roomName);
    if (!room) return;
    const item = room.byKey.get(`m:${clientId}`);
    if (item && isOutgoing(item) && validMessage(stored) && stored.id !== clientId) {
      this._removeItem(room, item);
      this.touch("outbox");
      this.addServerMessage(roomName, stored, { countUnread: false });
      return;
    }
    if (validMessage(stored)) this.addServerMessage(roomName, stored, { countUnread: false });
  }

  setOutgoing(roomName, id, changes) {
    const item = this.rooms.get(roomName)?.byKey.get(`m:${id}`);
    if (!item || !isOutgoing(item)) return null;
    Object.assign(item, changes);
    item.rev += 1;
    this.touch("messages", roomName);
    this.touch("outbox");
    return item;
  }

  discard(roomName, id) {
    const room = this.rooms.get(roomName);
    const item = room?.byKey.get(`m:${id}`);
    if (!item || !isOutgoing(item)) return;
    this._removeItem(room, item);
    this.touch("messages", roomName);
    this.touch("outbox");
  }

  /** Every message waiting to be sent, in the order the user wrote them. */
  outbox() {
    const out = [];
    for (const room of this.rooms.values()) for (const item of room.items) if (isMsg(item) && item.status === "pending") out.push(item);
    return out.sort((a, b) => a.seq - b.seq);
  }

  unsent() {
    const out = [];
    for (const room of this.rooms.values()) for (const item of room.items) if (isOutgoing(item)) out.push(item);
    return out.sort((a, b) => a.seq - b.seq);
  }

  // ---- local timeline items ------------------------------------------------------------------

  addInvite(roomName, { from, room, url }) {
    const target = this.ensureRoom(roomName);
    const item = { kind: "invite", key: `i:${++this._inviteSeq}`, from, target: room, url, time: Date.now(), rev: 0 };
    let at = target.items.length;
    while (at > 0 && isOutgoing(target.items[at - 1])) at -= 1;
    target.items.splice(at, 0, item);
    target.byKey.set(item.key, item);
    this.touch("messages", roomName);
    return item;
  }

  // ---- presence and typing -------------------------------------------------------------------

  setUsers(roomName, users) {
    const room = this.rooms.get(roomName);
    if (!room || !Array.isArray(users)) return;
    room.users = [...new Set(users.filter((u) => typeof u === "string"))].sort();
    for (const name of room.typing.keys()) if (!room.users.includes(name)) room.typing.delete(name);
    this.touch("users", roomName);
    this.touch("typing", roomName);
  }

  userJoined(roomName, username) {
    const room = this.rooms.get(roomName);
    if (!room || typeof username !== "string" || room.users.includes(username)) return;
    room.users = [...room.users, username].sort();
    this.touch("users", roomName);
  }

  userLeft(roomName, username) {
    const room = this.rooms.get(roomName);
    if (!room) return;
    room.users = room.users.filter((u) => u !== username);
    room.typing.delete(username);
    this.touch("users", roomName);
    this.touch("typing", roomName);
  }

  setTyping(roomName, username, now = Date.now()) {
    const room = this.rooms.get(roomName);
    if (!room || username === this.me || typeof username !== "string") return;
    room.typing.set(username, now + TYPING_MS);
    this.touch("typing", roomName);
  }

  /** Forgets typing notes older than a few seconds; true when something changed. */
  pruneTyping(now = Date.now()) {
    let changed = false;
    for (const room of this.rooms.values()) {
      for (const [name, until] of room.typing) {
        if (until <= now) {
          room.typing.delete(name);
          changed = true;
        }
      }
    }
    if (changed) this.touch("typing");
    return changed;
  }

  typingNames(roomName, now = Date.now()) {
    const room = this.rooms.get(roomName);
    if (!room) return [];
    return [...room.typing].filter(([, until]) => until > now).map(([name]) => name).sort();
  }

  // ---- persistence (sessionStorage, per tab) -------------------------------------------------

  snapshot() {
    return {
      current: this.current,
      rooms: [...this.rooms.values()].map((r) => ({ name: r.name, dmWith: r.dmWith })),
      outbox: this.unsent().map(({ id, body, time, room, seq }) => ({ id, body, time, room, seq })),
    };
  }

  // ---- internals -----------------------------------------------------------------------------

  _noteRev(room, msg) {
    const rev = revOf(msg);
    if (rev > room.maxRev) room.maxRev = rev;
  }

  _oldestConfirmedTime(room) {
    for (const item of room.items) if (isMsg(item) && item.status === "sent") return item.time;
    return null;
  }

  /** Messages by others after message `id`, or null when we do not hold `id`. */
  _unreadAfter(room, id) {
    const at = room.items.findIndex((item) => item.key === `m:${id}`);
    if (at < 0) return null;
    return room.items.slice(at + 1).filter((item) => isMsg(item) && item.status === "sent" && item.username !== this.me).length;
  }

  _removeItem(room, item) {
    const at = room.items.indexOf(item);
    if (at >= 0) room.items.splice(at, 1);
    room.byKey.delete(item.key);
  }

  /**
   * Confirmed messages are ordered by server time, before our pending sends. A message goes after
   * the last confirmed message with time <= its own, or after a local item (an invitation), so a
   * live message always lands at the bottom even when clocks disagree.
   */
  _insertConfirmed(room, item) {
    const items = room.items;
    let i = items.length - 1;
    while (i >= 0 && isOutgoing(items[i])) i -= 1;
    while (i >= 0 && isMsg(items[i]) && items[i].time > item.time) i -= 1;
    items.splice(i + 1, 0, item);
    room.byKey.set(item.key, item);
  }
}

