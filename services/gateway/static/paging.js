// Paging back over HTTP: older messages as the reader scrolls up (or while the screen is not yet
// full), and bridging the gap left by a rejoin whose recovery was not complete.
import { fetchMessages } from "./api.js";
import { errorText } from "./format.js";

const PAGE = 50;
const GAP_PAGE = 200;
const GAP_PAGES = 5;
const COOLDOWN_MS = 10000; // after a failed page, before scrolling tries again by itself

/** `store`, `conn` and `session` are getters: a new session replaces them. */
export function historyPaging({ store, conn, session, view }) {
  let cooldownUntil = 0;

  async function loadOlder() {
    const s = store();
    const room = s.currentRoom();
    if (room.loadingOlder || room.hasMore !== true || !session()) return;
    const before = s.oldestConfirmedId(room.name);
    if (!before) return;
    room.loadingOlder = true;
    s.touch("messages", room.name);
    try {
      const msgs = await fetchMessages(room.name, { before, limit: PAGE, session: session() });
      s.prependOlder(room.name, msgs, PAGE);
    } catch (err) {
      cooldownUntil = Date.now() + COOLDOWN_MS;
      const detail = err.code === "network" ? errorText("network") : err.message;
      view.notice(`Could not load older messages: ${detail}`, { kind: "error" });
    } finally {
      room.loadingOlder = false;
      s.touch("messages", room.name);
    }
  }

  return {
    /** The "Load older messages" button: tries now, even right after a failure. */
    loadOlder() {
      cooldownUntil = 0;
      loadOlder();
    },

    nearTop() {
      if (Date.now() > cooldownUntil) loadOlder();
    },

    /** After a render: a screen not yet full of messages asks for older ones. */
    fillViewport() {
      const room = store().currentRoom();
      const sc = view.el.scroller;
      if (room.hasMore === true && !room.loadingOlder && Date.now() > cooldownUntil && sc.scrollHeight <= sc.clientHeight + 40) loadOlder();
    },

    /**
     * A rejoin whose `sinceRev` (or `since`) could not be fully recovered (too many missed, or
     * `since` unknown): page back from the first recovered message until we meet what we already
     * hold. If that is too far, drop what is before the gap; scrolling up pages back through it
     * in order.
     */
    async bridgeGap(name, recovery, gen) {
      const history = await Promise.race([recovery.history, new Promise((r) => setTimeout(() => r(null), 5000))]);
      const s = store();
      if (!history || !history.length || !s.room(name)) return;
      const firstNew = history[0].id;
      let before = firstNew;
      let collected = [];
      try {
        for (let page = 0; page < GAP_PAGES; page += 1) {
          const msgs = await fetchMessages(name, { before, limit: GAP_PAGE, session: session() });
          if (!conn() || gen !== conn().generation || !s.room(name)) return;
          let known = -1;
          for (let i = msgs.length - 1; i >= 0; i -= 1) {
            if (s.hasMessage(name, msgs[i].id)) {
              known = i;
              break;
            }
          }
          if (known >= 0) {
            s.insertBefore(name, firstNew, [...msgs.slice(known + 1), ...collected]);
            return;
          }
          collected = [...msgs, ...collected];
          if (msgs.length < GAP_PAGE || !msgs.length) break;
          before = msgs[0].id;
        }
      } catch {
        /* fall through: drop the older part rather than show a hole */
      }
      s.dropBefore(name, firstNew);
      if (collected.length) s.prependOlder(name, collected, 1);
      const room = s.room(name);
      if (room) room.hasMore = true;
      view.notice(`You missed a lot in ${room?.dmWith ? `your chat with ${room.dmWith}` : `#${name}`} while you were away. Scroll up to read the older messages.`);
    },
  };
}
