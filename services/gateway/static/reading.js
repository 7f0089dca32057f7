// Read state (PROTOCOL.md 2.3): the room in view is marked read up to its newest message
// (markRead, once a burst of events has settled); each join's ack gives the room's unread count
// and where the reader left off; readMarker brings the marker from the user's other tabs and, in
// a private room, the other member's seen receipt.

const SETTLE_MS = 300;

/** `store` and `conn` are getters: a new session replaces both. */
export function readState({ store, conn }) {
  let timer = null;
  const marking = new Map(); // room -> the id of a markRead in flight

  function markCurrent() {
    timer = null;
    const s = store();
    const c = conn();
    if (!c?.isOpen || document.hidden || !document.body.classList.contains("in-chat")) return;
    const room = s.currentRoom();
    const id = s.lastConfirmedId(room.name);
    if (room.joinedGen !== c.generation || !id || id === room.lastRead || marking.get(room.name) === id) return;
    marking.set(room.name, id);
    c.request("markRead", { room: room.name, id }, { timeout: 15000 })
      .then((ack) => s.markedRead(room.name, ack.id, ack.unread))
      .catch(() => {}) // offline, or refused: the next render of the room tries again
      .finally(() => {
        if (marking.get(room.name) === id) marking.delete(room.name);
      });
  }

  return {
    /** The room in view was drawn: mark it read soon (cheap to call on every render). */
    viewed() {
      if (!timer) timer = setTimeout(markCurrent, SETTLE_MS);
    },

    joined(roomName, ack) {
      store().setReadState(roomName, ack);
    },

    marker(roomName, data) {
      if (!data || typeof data.id !== "string") return;
      if (typeof data.username === "string") store().seenBy(roomName, data.username, data.id);
      else store().markedRead(roomName, data.id);
    },
  };
}
