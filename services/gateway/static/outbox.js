// Sending the outbox: every message not yet acknowledged goes out once its room is joined on the
// current socket, in the order written, one room's messages behind each other; a refusal says
// whether to wait (rate limit, an outage: backoff with jitter), rejoin, or give up on it.
import { errorText } from "./format.js";

const RATE_PAUSE_MS = 1200;

/**
 * `store` and `conn` are getters (a new session replaces both); `persist` saves the tab's state;
 * `rejoin(room, gen)` joins a room the server says we are not in.
 */
export function outboxSender({ store, conn, view, persist, rejoin }) {
  let pausedUntil = 0;
  let timer = null;

  function later(ms) {
    clearTimeout(timer);
    timer = setTimeout(flush, Math.max(50, ms));
  }

  /** Sends every pending message whose room is joined on this connection, in the order written. */
  function flush() {
    const c = conn();
    if (!c?.isOpen) return;
    const now = Date.now();
    if (now < pausedUntil) {
      later(pausedUntil - now);
      return;
    }
    const s = store();
    const gen = c.generation;
    const blocked = new Set(); // rooms where an earlier message waits: later ones wait behind it
    for (const item of s.outbox()) {
      const room = s.room(item.room);
      if (!room || room.joinedGen !== gen || blocked.has(item.room)) continue;
      if (item.sentOn === gen) continue; // in flight on this socket
      if (item.retryAt > now) {
        blocked.add(item.room);
        later(item.retryAt - now);
        continue;
      }
      item.sentOn = gen;
      send(s, c, item, gen);
    }
  }

  function send(s, c, item, gen) {
    const data = { username: s.me, body: item.body, time: item.time, room: item.room, id: item.id };
    c.request("updateChat", data, { timeout: 20000 }).then(
      (stored) => {
        s.confirm(item.room, item.id, stored);
        persist();
      },
      (err) => {
        if (conn() !== c || gen !== c.generation) return; // a new socket resends it
        item.sentOn = -1;
        switch (err.code) {
          case "offline":
            return;
          case "timeout":
            c.restart("updateChat not acknowledged");
            return;
          case "rate_limited":
            pausedUntil = Date.now() + RATE_PAUSE_MS;
            view.notice(errorText("rate_limited"), { kind: "error", timeout: 5000 });
            later(RATE_PAUSE_MS);
            return;
          case "unavailable":
          case "internal": {
            item.retries = (item.retries || 0) + 1;
            const window = Math.min(30000, 1000 * 2 ** item.retries);
            item.retryAt = Date.now() + window / 2 + Math.random() * (window / 2);
            view.notice(errorText(err.code, err.message), { kind: "error" });
            later(item.retryAt - Date.now());
            return;
          }
          case "not_joined": {
            const room = s.room(item.room);
            if (!room) return;
            room.joinedGen = -1;
            rejoin(item.room, gen);
            return;
          }
          default:
            s.setOutgoing(item.room, item.id, { status: "failed", error: errorText(err.code, err.message, { room: item.room }) });
            view.notice(errorText(err.code, err.message, { room: item.room }), { kind: "error" });
        }
      },
    );
  }

  return {
    flush,
    /** The session ends: nothing more is sent. */
    stop() {
      clearTimeout(timer);
    },
  };
}
