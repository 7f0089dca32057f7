// DOM rendering. Every piece of user or server text goes in through textContent (or an attribute
// set with the DOM API): nothing is ever parsed as HTML. Styling is by class only (the page runs
// under a Content-Security-Policy without 'unsafe-inline').
import { MAIN } from "./store.js";
import { formatTime, hueFor, initialOf, safeHttpUrl, typingText, LIMITS, charCount } from "./format.js";
import { decorate, h, renderMessage, replaceKeepingFocus, undecorate } from "./message-view.js";
import { MessageTools } from "./message-tools.js";

// Unmute is offered on everyone: the protocol tells no client who is muted, and unmuting
// someone who is not is harmless.
const MOD_ACTIONS = [["mute", "Mute 10 min"], ["unmute", "Unmute"], ["kick", "Kick"], ["ban", "Ban"]];

const $ = (id) => document.getElementById(id);

function avatar(name, extra = "") {
  // The initial is drawn by CSS from data-initial, so it is not part of any element's text.
  return h("span", { class: `avatar hue-${hueFor(name)} ${extra}`.trim(), "aria-hidden": "true", dataset: { initial: initialOf(name) } });
}

const GROUP_MS = 5 * 60 * 1000;
const NEAR_BOTTOM = 80;

export class View {
  constructor(handlers) {
    this.handlers = handlers;
    this.el = {};
    for (const id of [
      "login", "login-form", "login-intro", "name-input", "name-error", "login-submit", "login-status",
      "chat", "drawer-toggle", "drawer-badge", "conn-pill", "conn-label", "me-avatar", "me-name", "switch-name",
      "conn-banner", "conn-banner-text", "conn-countdown", "reconnect-now", "sidebar", "scrim", "room-list", "user-list", "users-empty", "user-count",
      "banned-heading", "banned-list",
      "room", "room-title", "room-sub", "leave-room", "scroller", "load-older", "history-status", "empty",
      "messages", "jump", "jump-text", "typing", "composer", "message-input", "send", "composer-error", "char-count",
      "notices", "announcer", "edit-bar", "edit-cancel", "confirm-delete", "confirm-delete-text", "reaction-picker",
    ]) this.el[id] = $(id);
    this.tools = new MessageTools(this.el, handlers, { boxChanged: () => { this._autosize(); this._updateCount(); } });
    this.msgEls = new Map(); // item key -> {el, rev, cont}
    this.renderedRoom = null;
    this.newBelow = 0;
    this.forceBottom = false;
    this.lastAnnounce = 0;
    this.connTimer = null;
    this.mobile = window.matchMedia("(max-width: 760px)");
    this._bind();
  }

  // ---- wiring --------------------------------------------------------------------------------

  _bind() {
    const { el, handlers } = this;

    el["login-form"].addEventListener("submit", (e) => {
      e.preventDefault();
      handlers.login(el["name-input"].value.trim());
    });
    el["name-input"].addEventListener("input", () => this.setLoginError(null));

    el.composer.addEventListener("submit", (e) => {
      e.preventDefault();
      this._send();
    });
    const box = el["message-input"];
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        this._send();
      } else if (e.key === "Escape" && this.isDrawerOpen()) {
        this.setDrawer(false);
      } else if (e.key === "Escape" && this.tools.editing) {
        e.preventDefault();
        handlers.cancelEdit();
      } else if (e.key === "ArrowUp" && !box.value && !e.shiftKey && !e.altKey && !e.ctrlKey && !e.metaKey) {
        if (handlers.editLast()) e.preventDefault();
      }
    });
    box.addEventListener("input", () => {
      this._autosize();
      this._updateCount();
      if (box.value.trim()) handlers.typing();
      if (!el["composer-error"].hidden && charCount(box.value.trim()) <= LIMITS.body) this.setComposerError(null);
    });

    el["room-list"].addEventListener("click", (e) => {
      const link = e.target.closest("a[data-room]");
      if (!link || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      handlers.selectRoom(link.dataset.room);
      this.setDrawer(false);
    });
    el["banned-list"].addEventListener("click", (e) => {
      const act = e.target.closest("button[data-mod-action]");
      if (act) handlers.moderate(act.dataset.modAction, act.dataset.target);
    });
    el["user-list"].addEventListener("click", (e) => {
      const toggle = e.target.closest("button[data-moderate]");
      if (toggle) {
        const name = toggle.dataset.moderate;
        this._moderating = this._moderating === name ? null : name;
        if (this._usersShown) this._renderUsers(...this._usersShown);
        this.el["user-list"].querySelector(`[data-mod-action][data-target="${CSS.escape(name)}"]`)?.focus();
        return;
      }
      const act = e.target.closest("button[data-mod-action]");
      if (act) {
        this._moderating = null;
        if (this._usersShown) this._renderUsers(...this._usersShown);
        handlers.moderate(act.dataset.modAction, act.dataset.target);
        return;
      }
      const button = e.target.closest("button[data-user]");
      if (button) {
        handlers.startDm(button.dataset.user);
        this.setDrawer(false);
      }
    });
    el.messages.addEventListener("click", (e) => {
      const invite = e.target.closest("a[data-invite-room]");
      if (invite) {
        if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return; // new tab: let the browser do it
        e.preventDefault();
        handlers.joinInvite(invite.dataset.inviteRoom, invite.dataset.inviteFrom);
        return;
      }
      const action = e.target.closest("button[data-action]");
      const li = action?.closest("li[data-id]");
      if (!li) return;
      if (action.dataset.action === "pick") this.tools.openPicker(action, li.dataset.room, li.dataset.id);
      else handlers[action.dataset.action]?.(li.dataset.room, li.dataset.id, action.dataset);
    });
    el["load-older"].addEventListener("click", () => handlers.loadOlder());
    el["leave-room"].addEventListener("click", () => handlers.leaveRoom());
    el["switch-name"].addEventListener("click", () => handlers.switchName());
    el["reconnect-now"].addEventListener("click", () => handlers.reconnectNow());
    el.jump.addEventListener("click", () => {
      this.scrollToBottom(true);
      el["message-input"].focus();
    });

    // A reader at the bottom stays there when the layout changes (banner, composer, fonts).
    this.stick = true;
    const follow = () => {
      if (this.stick) el.scroller.scrollTop = el.scroller.scrollHeight;
    };
    if (globalThis.ResizeObserver) {
      const observer = new ResizeObserver(follow);
      observer.observe(el.scroller);
      observer.observe(el.messages);
    }
    el.scroller.addEventListener("scroll", () => {
      this.stick = this._isNearBottom();
      if (this.stick) this._setNewBelow(0);
      if (el.scroller.scrollTop < 300) handlers.nearTop();
    }, { passive: true });

    el["drawer-toggle"].addEventListener("click", () => this.setDrawer(!this.isDrawerOpen()));
    el.scrim.addEventListener("click", () => this.setDrawer(false));
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.isDrawerOpen()) {
        this.setDrawer(false);
        el["drawer-toggle"].focus();
      }
    });
    this.mobile.addEventListener("change", () => this.setDrawer(false));
  }

  _send() {
    const box = this.el["message-input"];
    if (this.handlers.send(box.value)) {
      box.value = "";
      this._autosize();
      this._updateCount();
      this.forceBottom = true;
    }
    box.focus();
  }

  _autosize() {
    if (globalThis.CSS?.supports?.("field-sizing", "content")) return;
    const box = this.el["message-input"];
    box.style.height = "auto";
    box.style.height = `${Math.min(box.scrollHeight + 2, 200)}px`;
  }

  _updateCount() {
    const n = charCount(this.el["message-input"].value.trim());
    const counter = this.el["char-count"];
    const show = n > LIMITS.body * 0.8;
    counter.hidden = !show;
    if (show) {
      counter.textContent = `${n.toLocaleString()} / ${LIMITS.body.toLocaleString()}`;
      counter.classList.toggle("over", n > LIMITS.body);
    }
  }

  // ---- screens -------------------------------------------------------------------------------

  showLogin({ intro, name, error, busy } = {}) {
    const { el } = this;
    el.chat.hidden = true;
    el.login.hidden = false;
    document.body.classList.remove("in-chat");
    document.title = "roomcast";
    this.renderedRoom = null;
    this.msgEls.clear();
    el.messages.replaceChildren();
    this.setDrawer(false);
    if (intro) el["login-intro"].textContent = intro;
    if (name !== undefined) el["name-input"].value = name;
    this.setLoginBusy(Boolean(busy));
    this.setLoginError(error || null);
    if (!busy) el["name-input"].focus();
  }

  setLoginBusy(busy, status = "") {
    const { el } = this;
    el["login-submit"].disabled = busy;
    el["login-submit"].textContent = busy ? "Joining…" : "Join chat";
    el["name-input"].readOnly = busy;
    el["login-status"].textContent = status;
  }

  setLoginError(message) {
    const { el } = this;
    el["name-error"].hidden = !message;
    el["name-error"].textContent = message || "";
    if (message) {
      el["name-input"].setAttribute("aria-invalid", "true");
      el["name-error"].setAttribute("role", "alert");
    } else {
      el["name-input"].removeAttribute("aria-invalid");
    }
  }

  /** `signedIn`: by the application's token (2.4), so the name is not the user's to switch. */
  showChat(me, { signedIn = false } = {}) {
    const { el } = this;
    el.login.hidden = true;
    el.chat.hidden = false;
    document.body.classList.add("in-chat");
    el["me-name"].textContent = me;
    el["switch-name"].textContent = signedIn ? "Sign out" : "Switch name";
    el["me-avatar"].className = `avatar avatar-sm hue-${hueFor(me)}`;
    el["me-avatar"].dataset.initial = initialOf(me);
    if (!this.mobile.matches) el["message-input"].focus();
  }

  setComposerError(message) {
    const error = this.el["composer-error"];
    error.hidden = !message;
    error.textContent = message || "";
    if (message) {
      error.setAttribute("role", "alert");
      this.el["message-input"].setAttribute("aria-invalid", "true");
    } else {
      this.el["message-input"].removeAttribute("aria-invalid");
    }
  }

  isDrawerOpen() {
    return this.el.chat.classList.contains("drawer-open");
  }

  setDrawer(open) {
    const { el } = this;
    const on = open && this.mobile.matches;
    el.chat.classList.toggle("drawer-open", on);
    el.room.inert = on;
    el["drawer-toggle"].setAttribute("aria-expanded", String(on));
    el.scrim.hidden = !on;
    if (on) el.sidebar.querySelector("a, button")?.focus();
  }

  // ---- connection state ----------------------------------------------------------------------

  /**
   * state: connecting | open | waiting; retryAt for the countdown. While the connection is down,
   * the banner is the only element that says so (the pill hides), so the state reads once.
   */
  setConnection({ state, retryAt, offline, everOpen }) {
    const { el } = this;
    clearInterval(this.connTimer);
    if (state === "stopped" || state === "idle") return;
    const pill = el["conn-pill"];
    const banner = el["conn-banner"];
    const wasDown = !banner.hidden;
    if (state === "open" || (state === "connecting" && !everOpen)) {
      pill.hidden = false;
      pill.dataset.state = state;
      el["conn-label"].textContent = state === "open" ? "Connected" : "Connecting…";
      banner.hidden = true;
      if (state === "open" && wasDown) this.announce("Reconnected.");
      return;
    }
    pill.hidden = true;
    el["conn-label"].textContent = "";
    banner.hidden = false;
    const lead = offline ? "No network connection." : everOpen ? "Connection lost." : "Can't reach the chat server.";
    if (state === "connecting") {
      el["conn-banner-text"].textContent = `${lead} Reconnecting now…`;
      el["conn-countdown"].textContent = "";
      el["reconnect-now"].hidden = true;
      return;
    }
    el["conn-banner-text"].textContent = `${lead} Reconnecting…`;
    el["reconnect-now"].hidden = false;
    if (!wasDown) this.announce(`${lead} Reconnecting. Messages you send meanwhile are kept and sent once the connection is back.`);
    const tick = () => {
      const secs = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      el["conn-countdown"].textContent = secs > 0 ? `Next try in ${secs} s.` : "";
    };
    tick();
    this.connTimer = setInterval(tick, 1000);
  }

  /** The session is over for good (a sign-in that expired): say why, offer no retry. */
  setEnded(text) {
    const { el } = this;
    clearInterval(this.connTimer);
    el["conn-pill"].hidden = true;
    el["conn-banner"].hidden = false;
    el["conn-banner-text"].textContent = text;
    el["conn-countdown"].textContent = "";
    el["reconnect-now"].hidden = true;
    this.announce(text);
  }

  // ---- notices -------------------------------------------------------------------------------

  /** A readable notice; kind is "info", "success" or "error". Same text again just restarts its timer. */
  notice(text, { kind = "info", timeout } = {}) {
    const container = this.el.notices;
    const ms = timeout ?? (kind === "error" ? 9000 : 5000);
    for (const existing of container.children) {
      if (existing.dataset.text === text) {
        clearTimeout(existing._timer);
        existing._timer = setTimeout(() => this._dismiss(existing), ms);
        return existing;
      }
    }
    const close = h("button", { type: "button", class: "notice-close", "aria-label": "Dismiss" });
    close.append(h("span", { "aria-hidden": "true", text: "×" }));
    const item = h("div", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status", dataset: { text } },
      h("p", { class: "notice-text", text }), close);
    close.addEventListener("click", () => this._dismiss(item));
    container.append(item);
    while (container.children.length > 4) this._dismiss(container.firstElementChild, true);
    item._timer = setTimeout(() => this._dismiss(item), ms);
    return item;
  }

  _dismiss(item, now = false) {
    if (!item || !item.isConnected) return;
    clearTimeout(item._timer);
    if (now || window.matchMedia("(prefers-reduced-motion: reduce)").matches) {
      item.remove();
      return;
    }
    item.classList.add("leaving");
    setTimeout(() => item.remove(), 200);
  }

  /**
   * Speaks to screen readers without putting a second copy of visible text in the DOM
   * (document.ariaNotify where the browser has it; else a live region emptied soon after).
   */
  announce(text) {
    if (typeof document.ariaNotify === "function") {
      try {
        document.ariaNotify(text);
        return;
      } catch {
        /* fall back to the live region */
      }
    }
    const a = this.el.announcer;
    clearTimeout(this._announceClear);
    a.textContent = "";
    setTimeout(() => { a.textContent = text; }, 50);
    this._announceClear = setTimeout(() => { a.textContent = ""; }, 3000);
  }

  // ---- rendering -----------------------------------------------------------------------------

  render(store, dirty) {
    const room = store.currentRoom();
    const switched = this.renderedRoom !== room.name;
    if (switched || dirty.has("rooms")) this._renderRooms(store);
    if (switched || dirty.has("users")) this._renderUsers(store, room);
    if (switched || dirty.has("messages") || dirty.has("rooms")) this._renderMessages(store, room, switched);
    if (switched || dirty.has("typing") || dirty.has("messages")) this._renderTyping(store, room);
    if (switched) {
      this._renderHeader(store, room);
      this.el["message-input"].placeholder = `Message ${room.dmWith ? room.dmWith : `#${room.name}`}`;
    } else if (dirty.has("rooms") || dirty.has("users")) {
      this._renderHeader(store, room);
    }
    this._renderTitle(store, room);
  }

  _roomLabel(room) {
    return room.dmWith ? room.dmWith : room.name;
  }

  _renderTitle(store, room) {
    const unread = store.totalUnread() + store.hiddenNew;
    const where = room.dmWith ? room.dmWith : `#${room.name}`;
    document.title = `${unread ? `(${unread}) ` : ""}${where} · roomcast`;
    this.el["drawer-badge"].hidden = store.totalUnread() === 0;
  }

  _renderHeader(store, room) {
    const { el } = this;
    el["room-title"].replaceChildren();
    if (room.dmWith) {
      el["room-title"].append(h("span", { class: "room-glyph lock", "aria-hidden": "true" }), document.createTextNode(room.dmWith));
      el["room-sub"].textContent = `Private chat · only you and ${room.dmWith} can read it · #${room.name}`;
    } else {
      el["room-title"].append(h("span", { class: "room-glyph", "aria-hidden": "true", text: "#" }), document.createTextNode(room.name));
      const n = room.users.length;
      el["room-sub"].textContent = n ? `${n} ${n === 1 ? "person" : "people"} here` : "";
    }
    el["leave-room"].hidden = room.name === MAIN;
  }

  _renderRooms(store) {
    const list = this.el["room-list"];
    const items = [];
    for (const room of store.rooms.values()) {
      const current = room.name === store.current;
      const link = h("a", {
        class: "room-link",
        href: room.name === MAIN ? "/" : `/?room=${encodeURIComponent(room.name)}`,
        "aria-current": current ? "page" : undefined,
        title: room.dmWith ? `Private chat with ${room.dmWith} (#${room.name})` : `#${room.name}`,
        dataset: { room: room.name },
      });
      if (room.dmWith) {
        link.append(avatar(room.dmWith, "avatar-xs"), h("span", { class: "sr-only", text: "Private chat with " }));
      } else {
        link.append(h("span", { class: "room-glyph", "aria-hidden": "true", text: "#" }));
      }
      link.append(h("span", { class: "room-name", text: this._roomLabel(room) }));
      if (room.unread && !current) {
        const badge = h("span", { class: "badge", text: room.unread > 99 ? "99+" : String(room.unread) });
        badge.append(h("span", { class: "sr-only", text: " unread" }));
        link.append(badge);
      }
      items.push(h("li", {}, link));
    }
    list.replaceChildren(...items);
  }

  _renderUsers(store, room) {
    const list = this.el["user-list"];
    const focusedUser = document.activeElement?.closest?.("#user-list button")?.dataset.user;
    const items = room.users.map((name) => {
      const me = name === store.me;
      const button = h("button", {
        type: "button",
        class: "user-btn",
        dataset: { user: name },
        title: me ? "This is you" : `Start a private chat with ${name}`,
        "aria-disabled": me ? "true" : undefined,
      }, avatar(name, "avatar-sm"), h("span", { class: "user-name", text: name }));
      if (me || !room.moderates || room.dmWith) return h("li", { class: me ? "user is-me" : "user" }, button);
      // the room's owner or a moderator (2.4): mute, kick, ban (not in a private chat of two)
      const open = this._moderating === name;
      const toggle = h("button", {
        type: "button",
        class: "user-mod-btn",
        dataset: { moderate: name },
        "aria-label": `Moderate ${name}`,
        "aria-expanded": open ? "true" : "false",
        title: `Mute, kick or ban ${name}`,
        text: "⋯",
      });
      const menu = open
        ? h("div", { class: "user-mod-menu", role: "group", "aria-label": `Moderate ${name}` },
          ...MOD_ACTIONS.map(([action, label]) => h("button", {
            type: "button", class: "btn btn-ghost", dataset: { modAction: action, target: name }, text: label,
          })))
        : null;
      return h("li", { class: "user has-mod" }, button, toggle, ...(menu ? [menu] : []));
    });
    this._usersShown = [store, room];
    list.replaceChildren(...items);
    this.el["user-count"].textContent = room.users.length ? String(room.users.length) : "";
    if (focusedUser) list.querySelector(`button[data-user="${CSS.escape(focusedUser)}"]`)?.focus();
    this.el["users-empty"].hidden = room.users.length > 0;
    this._renderBanned(room);
  }

  /** The users this page banned from the room (while it may moderate it), each with Unban. */
  _renderBanned(room) {
    const names = room.moderates && room.banned ? [...room.banned].sort() : [];
    this.el["banned-heading"].hidden = this.el["banned-list"].hidden = names.length === 0;
    this.el["banned-list"].replaceChildren(...names.map((name) => h("li", { class: "user banned" },
      h("span", { class: "user-name", text: name }),
      h("button", { type: "button", class: "btn btn-ghost", dataset: { modAction: "unban", target: name }, "aria-label": `Unban ${name}`, text: "Unban" }))));
  }

  _renderTyping(store, room) {
    const names = store.typingNames(room.name);
    const line = this.el.typing;
    if (names.length) line.textContent = typingText(names);
    line.classList.toggle("visible", names.length > 0);
    // faded out, the stale line must not be read out by screen readers
    line.setAttribute("aria-hidden", names.length > 0 ? "false" : "true");
  }

  isFollowingBottom() {
    return this._isNearBottom();
  }

  _isNearBottom() {
    const s = this.el.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM;
  }

  scrollToBottom(smooth = false) {
    const s = this.el.scroller;
    const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    s.scrollTo({ top: s.scrollHeight, behavior: smooth && !reduce ? "smooth" : "auto" });
    this.stick = true;
    this._setNewBelow(0);
  }

  _setNewBelow(n) {
    this.newBelow = n;
    this.el.jump.hidden = n === 0;
    if (n) this.el["jump-text"].textContent = n === 1 ? "1 new message" : `${n} new messages`;
  }

  _renderMessages(store, room, switched) {
    const { el } = this;
    const list = el.messages;
    const scroller = el.scroller;
    if (switched) {
      list.replaceChildren();
      this.msgEls.clear();
      this.renderedRoom = room.name;
      this._setNewBelow(0);
    }
    undecorate(list);
    const wasNearBottom = switched || this.forceBottom || this.stick || this._isNearBottom();
    const prevHeight = scroller.scrollHeight;
    const prevTop = scroller.scrollTop;
    const prevFirst = list.firstElementChild;
    const prevLast = list.lastElementChild;

    // Keyed reconcile: walk the timeline, reuse/update elements, insert where needed.
    const seen = new Set();
    let cursor = list.firstElementChild;
    let prev = null;
    let appended = 0;
    for (const item of room.items) {
      seen.add(item.key);
      const cont = item.kind === "msg" && prev?.kind === "msg" && prev.username === item.username
        && (prev.status === "sent") === (item.status === "sent") && Math.abs(item.time - prev.time) < GROUP_MS;
      let entry = this.msgEls.get(item.key);
      if (!entry || entry.rev !== item.rev || entry.item !== item) {
        const fresh = this._renderItem(store, item);
        if (entry && entry.el.isConnected) {
          if (cursor === entry.el) cursor = fresh;
          replaceKeepingFocus(entry.el, fresh);
        } else if (!switched && item.kind === "msg" && item.username !== store.me) {
          appended += 1; // new, not a message that changed
        }
        entry = { el: fresh, rev: item.rev, item, cont: null };
        this.msgEls.set(item.key, entry);
      }
      if (entry.cont !== cont) {
        entry.el.classList.toggle("cont", cont);
        entry.cont = cont;
      }
      if (entry.el === cursor) {
        cursor = cursor.nextElementSibling;
      } else {
        list.insertBefore(entry.el, cursor);
      }
      prev = item;
    }
    while (cursor) {
      const next = cursor.nextElementSibling;
      cursor.remove();
      cursor = next;
    }
    for (const key of this.msgEls.keys()) if (!seen.has(key)) this.msgEls.delete(key);
    decorate(list, room, store.me, (key) => this.msgEls.get(key)?.el);

    // History framing above the list.
    const hasItems = room.items.length > 0;
    el.empty.hidden = hasItems;
    if (!hasItems) el.empty.textContent = room.historyLoaded ? `No messages in ${room.dmWith ? "this private chat" : `#${room.name}`} yet. Say hello!` : "Loading messages…";
    el["load-older"].hidden = !(room.hasMore === true && !room.loadingOlder && hasItems);
    const status = el["history-status"];
    if (room.loadingOlder) {
      status.hidden = false;
      status.textContent = "Loading older messages…";
    } else if (room.hasMore === false && hasItems) {
      status.hidden = false;
      status.textContent = room.dmWith ? `This is the beginning of your private chat with ${room.dmWith}.` : `This is the beginning of #${room.name}.`;
    } else {
      status.hidden = true;
    }

    // Scroll: follow the bottom when the reader was there; keep the view still when older
    // messages were added above; otherwise offer a "new messages" button.
    const prependedAbove = !switched && prevFirst && list.firstElementChild !== prevFirst && prevFirst.isConnected;
    if (wasNearBottom) {
      this.scrollToBottom(false);
    } else if (prependedAbove) {
      scroller.scrollTop = prevTop + (scroller.scrollHeight - prevHeight);
    } else if (appended && list.lastElementChild !== prevLast) {
      this._setNewBelow(this.newBelow + appended);
    }
    this.forceBottom = false;
  }

  _renderItem(store, item) {
    if (item.kind === "invite") return this._renderInvite(item);
    return renderMessage(item, store.me, avatar);
  }

  _renderInvite(item) {
    const href = safeHttpUrl(item.url || "", location.href) || `${location.origin}/?room=${encodeURIComponent(item.target)}`;
    const time = formatTime(item.time);
    const link = h("a", { class: "invite-link", href, dataset: { inviteRoom: item.target, inviteFrom: item.from }, text: `join #${item.target}` });
    return h("li", { class: "invite" },
      h("span", { class: "invite-icon", "aria-hidden": "true" }),
      h("p", { class: "invite-text" },
        h("strong", { text: item.from }),
        document.createTextNode(" invited you to a private chat — "),
        link,
        document.createTextNode(" "),
        h("time", { class: "msg-time", datetime: time.iso, title: time.full, text: time.label })));
  }

  /** Tells screen-reader users about new messages in the room in view, without flooding them. */
  announceMessage(item) {
    this._queued = (this._queued || 0) + 1;
    this._queuedItem = item;
    if (this._announceTimer) return;
    const wait = Math.max(0, 1500 - (Date.now() - this.lastAnnounce));
    this._announceTimer = setTimeout(() => {
      const n = this._queued;
      const last = this._queuedItem;
      this._queued = 0;
      this._announceTimer = null;
      this.lastAnnounce = Date.now();
      this.announce(n === 1 ? `${last.username}: ${last.body.slice(0, 200)}` : `${n} new messages`);
    }, wait);
  }
}
