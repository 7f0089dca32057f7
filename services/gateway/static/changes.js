// Changing messages (PROTOCOL.md 2.3): editing one's own (the edit button, or Up arrow in an
// empty composer), deleting after a confirmation, and toggling reactions. Each is a request whose
// ack is the message in its new state; the others in the room get the same state as
// editChat/deleteChat/react, which app.js applies the same way (replacing the copy by id).
import { checkBody, errorText } from "./format.js";

const PREVIEW = 140;

/** `store` and `conn` are getters: a new session replaces both. */
export function messageChanges({ store, conn, view }) {
  const tools = view.tools;

  async function change(event, data) {
    const c = conn();
    if (!c?.isOpen) {
      view.notice("You're offline right now. Try again once the connection is back.", { kind: "error" });
      return null;
    }
    try {
      const message = await c.request(event, data, { timeout: 15000 });
      store().applyChange(data.room, message);
      return message;
    } catch (err) {
      view.notice(errorText(err.code, err.message, { room: data.room }), { kind: "error" });
      return null;
    }
  }

  function beginEdit(item) {
    tools.beginEdit(item.room, item.id, item.body);
    view.announce("Editing your message. Enter saves it, Escape cancels.");
  }

  /** Our own message that can still be changed, or null. */
  function own(room, id) {
    const item = store().message(room, id);
    return item && item.status === "sent" && !item.deleted && item.username === store().me ? item : null;
  }

  return {
    edit(room, id) {
      const item = own(room, id);
      if (item && room === store().current) beginEdit(item);
    },

    /** Up arrow in an empty composer: true when there was a message to edit. */
    editLast() {
      const item = store().lastOwnEditable(store().current);
      if (item) beginEdit(item);
      return Boolean(item);
    },

    cancelEdit() {
      view.setComposerError(null);
      tools.endEdit();
    },

    /** Enter while editing: saves the new text (an unchanged text just leaves edit mode). */
    async submitEdit(text) {
      const editing = tools.editing;
      if (!editing) return;
      const { body, problem } = checkBody(text);
      if (problem) {
        view.setComposerError(problem === "empty" ? "An edited message can't be empty: delete it instead." : problem);
        return;
      }
      view.setComposerError(null);
      const item = own(editing.room, editing.id);
      if (!item || item.body === body) {
        tools.endEdit();
        return;
      }
      const saved = await change("editChat", { room: editing.room, id: editing.id, body });
      if (saved && tools.editing?.id === editing.id) tools.endEdit();
    },

    async delete(room, id) {
      const item = own(room, id);
      if (!item) return;
      const text = Array.from(item.body);
      const preview = text.length > PREVIEW ? `${text.slice(0, PREVIEW).join("")}…` : item.body;
      if (!(await tools.confirmDelete(`“${preview}”`))) return;
      if (tools.editing?.id === id) tools.endEdit();
      await change("deleteChat", { room, id });
    },

    /** Adds our reaction with `emoji`, or takes it back when we already reacted with it. */
    react(room, id, { emoji }) {
      const item = store().message(room, id);
      if (!item || item.deleted || typeof emoji !== "string") return;
      const add = !(item.reactions[emoji] || []).includes(store().me);
      change("react", { room, id, emoji, add });
    },
  };
}
