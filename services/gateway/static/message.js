// A message as the timeline holds it, from the server's message object (PROTOCOL.md 2.3): its
// current state (body, edited, deleted, reactions) and the server's `rev` of that state, so an
// older copy never overwrites a newer one whichever way the two arrive (live, recovery, a page).
// `rev` on the item is the view's render counter; the server's rev is `serverRev`.

export function validMessage(m) {
  return m && typeof m === "object" && typeof m.id === "string" && m.id && typeof m.username === "string" && typeof m.body === "string" && typeof m.time === "number";
}

export function revOf(m) {
  return Number.isSafeInteger(m?.rev) && m.rev > 0 ? m.rev : 0;
}

function stateOf(m) {
  const reactions = {};
  if (m.reactions && typeof m.reactions === "object") {
    for (const [emoji, users] of Object.entries(m.reactions)) {
      if (Array.isArray(users) && users.length) reactions[emoji] = users.filter((u) => typeof u === "string");
    }
  }
  return {
    body: m.deleted === true ? "" : m.body,
    edited: typeof m.edited === "number" ? m.edited : null,
    deleted: m.deleted === true,
    reactions,
    serverRev: revOf(m),
  };
}

/** A confirmed timeline item for a valid server message object. */
export function messageItem(roomName, m) {
  return { kind: "msg", key: `m:${m.id}`, id: m.id, username: m.username, time: m.time, room: roomName, status: "sent", error: null, rev: 0, ...stateOf(m) };
}

/** True when `m` is a later state of the held item (a higher rev). */
export function newerState(item, m) {
  return revOf(m) > (item.serverRev || 0);
}

/** Replaces the item's state by that of `m` (the server's copy wins) and marks it for rendering. */
export function takeState(item, m) {
  Object.assign(item, stateOf(m));
  item.rev += 1;
}

/** The emoji and who reacted with each, in a stable order (first reacted first, as stored). */
export function reactionList(item, me) {
  return Object.entries(item.reactions || {}).map(([emoji, users]) => ({ emoji, users, count: users.length, mine: users.includes(me) }));
}
