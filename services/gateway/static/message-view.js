// One message of the timeline as DOM: author, time, body (or the tombstone of a deleted one),
// the "edited" mark, reactions, and the tools to react, edit and delete. Plus what decorates the
// list around messages: the "new messages" line and the seen receipt of a private room.
// Text goes in through textContent only (view.js says why).
import { formatTime, linkify } from "./format.js";
import { reactionList } from "./message.js";

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) el.append(child);
  return el;
}

function tool(action, label, glyph) {
  return h("button", { type: "button", class: "msg-tool", dataset: { action }, "aria-label": label, title: label },
    h("span", { "aria-hidden": "true", text: glyph }));
}

function body(item) {
  if (item.deleted) return h("p", { class: "msg-body msg-deleted", text: "message deleted" });
  const p = h("p", { class: "msg-body" });
  for (const part of linkify(item.body)) {
    if (part.href) p.append(h("a", { href: part.href, target: "_blank", rel: "noopener noreferrer nofollow", text: part.text }));
    else p.append(document.createTextNode(part.text));
  }
  return p;
}

function reactions(item, me) {
  const list = reactionList(item, me);
  if (!list.length || item.deleted) return null;
  return h("div", { class: "reactions" }, ...list.map(({ emoji, users, count, mine }) =>
    h("button", {
      type: "button",
      class: mine ? "reaction mine" : "reaction",
      "aria-pressed": String(mine),
      title: `${users.join(", ")} reacted with ${emoji}`,
      dataset: { action: "react", emoji },
      text: `${emoji} ${count}`,
    })));
}

/** The list item of a message (`avatar` draws the author's avatar). */
export function renderMessage(item, me, avatar) {
  const mine = item.username === me;
  const sent = item.status === "sent";
  const time = formatTime(item.time);
  const classes = ["msg"];
  if (mine) classes.push("mine");
  if (item.status === "pending") classes.push("is-pending");
  if (item.status === "failed") classes.push("is-failed");
  if (item.deleted) classes.push("is-deleted");
  const li = h("li", { class: classes.join(" "), tabindex: sent && !item.deleted ? "-1" : undefined, dataset: { id: item.id, room: item.room } });
  const meta = h("div", { class: "msg-meta" },
    h("span", { class: "msg-author", text: item.username }),
    document.createTextNode(" "),
    h("time", { class: "msg-time", datetime: time.iso, title: time.full, text: time.label }));
  if (item.edited && !item.deleted) meta.append(h("span", { class: "msg-edited", title: `Edited ${formatTime(item.edited).full}`, text: "edited" }));
  if (item.status === "pending") meta.append(h("span", { class: "msg-status", text: "Sending…" }));
  if (item.status === "failed") meta.append(h("span", { class: "msg-status", text: `Not sent${item.error ? `: ${item.error}` : ""}` }));
  const main = h("div", { class: "msg-main" }, meta, body(item), reactions(item, me));
  if (item.status === "failed") {
    main.append(h("div", { class: "msg-actions" },
      h("button", { type: "button", class: "btn btn-sm", dataset: { action: "retry" }, text: "Retry" }),
      h("button", { type: "button", class: "btn btn-sm btn-ghost", dataset: { action: "discard" }, text: "Delete" })));
  }
  li.append(avatar(item.username), main);
  if (sent && !item.deleted) {
    const tools = h("div", { class: "msg-tools" }, tool("pick", "Add reaction", "☺"));
    if (mine) tools.append(tool("edit", "Edit message", "✎"), tool("delete", "Delete message", "🗑"));
    li.append(tools);
  }
  return li;
}

/**
 * Replaces a message's element by its new rendering, keeping keyboard focus on the same control
 * (a reaction just toggled, say) instead of losing it to the page.
 */
export function replaceKeepingFocus(old, fresh) {
  const active = document.activeElement;
  const had = old.contains(active) ? active : null;
  old.replaceWith(fresh);
  if (!had) return;
  const { action, emoji } = had.dataset || {};
  const match = action && [...fresh.querySelectorAll("[data-action]")].find((el) => el.dataset.action === action && el.dataset.emoji === emoji);
  (match || fresh).focus({ preventScroll: true });
}

/** Takes the decorations out, so the list holds only timeline items while it is reconciled. */
export function undecorate(list) {
  for (const old of list.querySelectorAll(".new-line, .msg-seen")) old.remove();
}

/**
 * Puts the "new messages" line after the message the reader had read last, and, in a private
 * room, "Seen" under our newest message the other member has read. Called after every render
 * of the list, since a re-rendered message replaces its element.
 */
export function decorate(list, room, me, elementOf) {
  undecorate(list);
  const items = room.items;
  if (room.newLineAfter !== undefined) {
    const at = room.newLineAfter === null ? -1 : items.findIndex((item) => item.key === `m:${room.newLineAfter}`);
    const next = items.slice(at + 1).find((item) => item.kind === "msg" && item.status === "sent" && item.username !== me);
    const el = next && elementOf(next.key);
    if (el) el.before(h("li", { class: "new-line", role: "separator", "aria-label": "New messages" }, h("span", { text: "New messages" })));
  }
  if (!room.dmWith) return;
  for (const [username, id] of room.seen) {
    const at = items.findIndex((item) => item.key === `m:${id}`);
    for (let i = at; i >= 0; i -= 1) {
      const item = items[i];
      if (item.kind !== "msg" || item.username !== me || item.status !== "sent") continue;
      elementOf(item.key)?.querySelector(".msg-main")?.append(h("p", { class: "msg-seen", title: `${username} has read up to here`, text: "Seen" }));
      break;
    }
  }
}
