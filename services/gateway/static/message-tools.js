// The view's side of changing messages: the composer's edit mode (a bar says a message is being
// edited; Escape or Cancel leaves it and gives back what was typed before), the in-page
// confirmation before a delete (a modal <dialog>: focus is trapped and Escape cancels, which
// window.confirm would do too, but blocking the page and unstyled), and the small emoji picker
// (a popover: it closes on Escape or a click elsewhere). What gets sent is app.js's business.
import { h } from "./message-view.js";

export const EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

export class MessageTools {
  constructor(el, handlers, { boxChanged }) {
    this.el = el;
    this.handlers = handlers;
    this.boxChanged = boxChanged;
    this.editing = null; // {room, id, draft}: the message being edited, and the text set aside
    this.picking = null; // {room, id}: the message the picker is open for
    this._confirmed = null;
    const picker = el["reaction-picker"];
    picker.append(...EMOJI.map((emoji) => h("button", { type: "button", class: "pick", "aria-label": `React with ${emoji}`, title: emoji, dataset: { emoji }, text: emoji })));
    picker.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-emoji]");
      if (!button || !this.picking) return;
      const { room, id } = this.picking;
      picker.hidePopover();
      handlers.react(room, id, { emoji: button.dataset.emoji });
    });
    picker.addEventListener("toggle", (e) => {
      if (e.newState === "closed") this.picking = null;
    });
    el["edit-cancel"].addEventListener("click", () => handlers.cancelEdit());
    const dialog = el["confirm-delete"];
    for (const button of dialog.querySelectorAll("button[value]")) button.addEventListener("click", () => dialog.close(button.value));
    dialog.addEventListener("close", () => {
      this._confirmed?.(dialog.returnValue === "delete");
      this._confirmed = null;
    });
  }

  /** Puts the message's text in the composer to be edited. */
  beginEdit(room, id, body) {
    const box = this.el["message-input"];
    const draft = this.editing ? this.editing.draft : box.value;
    this.editing = { room, id, draft };
    this.el["edit-bar"].hidden = false;
    this.el.composer.classList.add("is-editing");
    box.value = body;
    this.boxChanged();
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }

  /** Leaves edit mode, giving back what was in the composer before. */
  endEdit() {
    if (!this.editing) return;
    const box = this.el["message-input"];
    box.value = this.editing.draft;
    this.editing = null;
    this.el["edit-bar"].hidden = true;
    this.el.composer.classList.remove("is-editing");
    this.boxChanged();
    box.focus();
  }

  /** Asks before deleting; resolves to true when the user confirms. */
  confirmDelete(preview) {
    const dialog = this.el["confirm-delete"];
    if (dialog.open) return Promise.resolve(false);
    this.el["confirm-delete-text"].textContent = preview;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      this._confirmed = resolve;
      dialog.showModal();
    });
  }

  /** Opens the emoji picker beside the message's "Add reaction" button. */
  openPicker(button, room, id) {
    const picker = this.el["reaction-picker"];
    if (picker.matches(":popover-open")) picker.hidePopover();
    this.picking = { room, id };
    picker.showPopover();
    // Below the button, or above it near the bottom of the screen; never past the right edge.
    const at = button.getBoundingClientRect();
    const { offsetWidth: w, offsetHeight: ht } = picker;
    const top = at.bottom + 6 + ht > window.innerHeight ? at.top - ht - 6 : at.bottom + 6;
    picker.style.top = `${Math.max(4, top)}px`;
    picker.style.left = `${Math.max(4, Math.min(at.right - w, window.innerWidth - w - 4))}px`;
    picker.querySelector("button")?.focus();
  }
}
