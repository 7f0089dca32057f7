// Read state (PROTOCOL.md 2.3): the room in view is marked read up to its newest message
// (markRead, once a burst of events has settled); each join's ack gives the room's unread count
// and where the reader left off; readMarker brings the marker from the user's other tabs and, in
// a private room, the other member's seen receipt.

const SETTLE_MS = 300;

/** `store` and `conn` are getters: a new session replaces both. */
export function readState({ store, conn }) {
  let timer = null;
  const due = new Map(); // room -> the newest message id it showed: marked when the timer fires
  const marking = new Map(); // room -> the id of a markRead in flight

  function mark(s, c, name, id) {
    const room = s.room(name);
    if (!room || room.joinedGen !== c.generation || id === room.lastRead || marking.get(name) === id) return;
    marking.set(name, id);
    c.request("markRead", { room: name, id }, { timeout: 15000 })
      .then((ack) => s.markedRead(name, ack.id, ack.unread))
      .catch(() => {}) // offline, or refused: the next render of the room tries again
      .finally(() => {
        if (marking.get(name) === id) marking.delete(name);
      });
  }

  function markDue() {
    timer = null;
    const s = store();
    const c = conn();
    if (c?.isOpen) for (const [name, id] of due) mark(s, c, name, id);
    due.clear();
  }

  return {
    /**
     * The room in view was drawn: it is marked read up to what it shows, soon (a room looked at
     * only briefly too). Cheap to call on every render.
     */
    viewed() {
      const s = store();
      const id = s.lastConfirmedId(s.current);
      if (!id || document.hidden || !document.body.classList.contains("in-chat")) return;
      due.set(s.current, id);
      if (!timer) timer = setTimeout(markDue, SETTLE_MS);
    },

    /** Marks what is due now: the reader leaves the room or the page. */
    flush() {
      clearTimeout(timer);
      markDue();
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
