// Pure helpers: validation (the protocol's names and limits), ids, time, links, wording.
// No DOM access here, so every function can be unit-tested under plain Node.

export const LIMITS = Object.freeze({ username: 32, room: 64, body: 2000, usernameBytes: 64, roomBytes: 128 });

// PROTOCOL.md "Names and limits" and 2.2, as roomcast.shared.names judges them after NFKC:
// Unicode letters and digits, `_` and `-`; combining marks (at most 4) only on a letter or digit,
// for the scripts that need them. Invisible, format, bidi and space characters match nothing here.
const NAME_RE = /^(?:[\p{L}\p{N}]\p{M}{0,4}|[_-])+$/u;
const utf8 = new TextEncoder();

/** The name as the server will store it: NFKC (fullwidth letters, ligatures folded). */
export function normalName(name) {
  return typeof name === "string" ? name.normalize("NFKC") : name;
}

function byteCount(text) {
  return utf8.encode(text).length;
}
const CLIENT_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;
const ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/** Length in code points, as the server counts (Python `len`). */
export function charCount(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

/** Returns null when `name` is a valid username, otherwise a friendly reason. */
export function usernameProblem(name) {
  if (!name) return "Please enter a name.";
  if (charCount(name) > LIMITS.username) return `Names can be at most ${LIMITS.username} characters.`;
  if (byteCount(name) > LIMITS.usernameBytes) return `That name is too long: at most ${LIMITS.usernameBytes} bytes, and letters beyond Latin take 2 to 4 each. Try a shorter one.`;
  if (/\s/u.test(name)) return "Names can't contain spaces: try _ or - instead.";
  if (!NAME_RE.test(name)) return "Names can only use letters, digits, _ and -.";
  return null;
}

export function isValidRoom(name) {
  return typeof name === "string" && name.length > 0 && charCount(name) <= LIMITS.room && byteCount(name) <= LIMITS.roomBytes && NAME_RE.test(name);
}

/** Validates a message body the way the server does; returns {body} (trimmed) or {problem}. */
export function checkBody(raw) {
  const body = raw.trim();
  if (!body) return { problem: "empty" };
  const n = charCount(body);
  if (n > LIMITS.body) {
    return { problem: `That message is ${n.toLocaleString()} characters long; the limit is ${LIMITS.body.toLocaleString()}. Please shorten it or split it in two.` };
  }
  return { body };
}

export function randomToken(length) {
  const bytes = new Uint8Array(length);
  globalThis.crypto.getRandomValues(bytes);
  let out = "";
  for (const b of bytes) out += ALNUM[b % ALNUM.length];
  return out;
}

/** A client message id: 8..64 chars of [A-Za-z0-9_-], unique enough to be an idempotency key. */
export function clientId() {
  const id = `c${Date.now().toString(36)}-${randomToken(12)}`;
  return CLIENT_ID_RE.test(id) ? id : `c-${randomToken(20)}`;
}

export function isClientId(id) {
  return typeof id === "string" && CLIENT_ID_RE.test(id);
}

function truncate(text, max) {
  return Array.from(text).slice(0, max).join("");
}

/** Name for a new private room: dm-<a>-<b>-<random>, always within the room alphabet and limit. */
export function dmRoomName(me, other) {
  const [a, b] = [me, other].sort();
  const name = `dm-${truncate(a, 24)}-${truncate(b, 24)}-${randomToken(6)}`;
  return isValidRoom(name) ? name : `dm-${randomToken(12)}`;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayTimeFmt = new Intl.DateTimeFormat(undefined, { weekday: "short", hour: "numeric", minute: "2-digit" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", hour: "numeric", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** {label, full, iso} for a message time in ms since the epoch. */
export function formatTime(ms, now = Date.now()) {
  const date = new Date(Number.isFinite(ms) && ms > 0 ? ms : now);
  const today = new Date(now);
  const sameDay = date.toDateString() === today.toDateString();
  const ageDays = (today - date) / 86_400_000;
  let label;
  if (sameDay) label = timeFmt.format(date);
  else if (ageDays < 6 && ageDays > -1) label = dayTimeFmt.format(date);
  else label = dateTimeFmt.format(date);
  return { label, full: fullFmt.format(date), iso: date.toISOString() };
}

/** Returns the URL as a string when it is an absolute http(s) URL (resolved against base), else null. */
export function safeHttpUrl(raw, base) {
  try {
    const url = base === undefined ? new URL(raw) : new URL(raw, base);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/giu;
const TRAILING = /[.,;:!?'"»”’]+$/u;

/** Splits text into [{text}] and [{text, href}] segments; only http(s) URLs become links. */
export function linkify(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0];
    // Leave closing punctuation to the sentence, keeping balanced parentheses (wiki links).
    for (;;) {
      const trimmed = url.replace(TRAILING, "");
      if (trimmed !== url) { url = trimmed; continue; }
      if (url.endsWith(")") && countOf(url, "(") < countOf(url, ")")) { url = url.slice(0, -1); continue; }
      if (url.endsWith("]") && countOf(url, "[") < countOf(url, "]")) { url = url.slice(0, -1); continue; }
      break;
    }
    const href = safeHttpUrl(url);
    if (!href || url.length <= "https://".length) continue;
    if (match.index > last) parts.push({ text: text.slice(last, match.index) });
    parts.push({ text: url, href });
    last = match.index + url.length;
  }
  if (last < text.length) parts.push({ text: text.slice(last) });
  return parts;
}

function countOf(text, ch) {
  let n = 0;
  for (const c of text) if (c === ch) n += 1;
  return n;
}

export function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
  return `${names.length} people are typing…`;
}

/** A stable hue bucket (0..11) for a username's avatar colour. */
export function hueFor(name) {
  let h = 2166136261;
  for (const c of name) h = Math.imul(h ^ c.codePointAt(0), 16777619);
  return (h >>> 0) % 12;
}

export function initialOf(name) {
  const first = Array.from(name)[0] || "?";
  return first.toLocaleUpperCase();
}

/** Plain-words text for a server or client error, with what the user can do about it. */
export function errorText(code, message, ctx = {}) {
  const room = ctx.room ? `#${ctx.room}` : "that room";
  switch (code) {
    case "rate_limited":
      return "You're sending messages too fast (rate limited). Waiting a moment before sending the rest.";
    case "username_taken":
      return `The name “${ctx.username ?? "you chose"}” is in use, or kept for a few minutes for whoever had it last (names that look alike count as the same). Please pick another name.`;
    case "username_mismatch":
      return "This page is already chatting under another name. Reload the page to switch names.";
    case "room_private":
      return `${room} is a private room for two other people, so you can't join it.`;
    case "room_exists":
      return `${room} can't be turned into a private room: it already has other people in it.`;
    case "user_offline":
      return `${ctx.username ?? "That person"} is offline right now. Try again when they are back.`;
    case "not_joined":
      return `You're not in ${room} any more; rejoining…`;
    case "not_found":
      return "That message is no longer there.";
    case "forbidden":
      return "You can only change your own messages.";
    case "invalid":
      return message ? `The server refused that: ${message}` : "The server refused that as invalid.";
    case "unavailable":
      return "The chat service is briefly unavailable. Retrying shortly…";
    case "timeout":
      return "The server did not answer in time. Reconnecting…";
    case "http":
      return message || "Could not load messages.";
    case "network":
      return "Could not reach the server. Check your connection.";
    case "internal":
      return "Something went wrong on the server. Please try again.";
    case "muted": {
      const left = /(\d+) more seconds?/.exec(message || "");
      const minutes = left ? Math.ceil(Number(left[1]) / 60) : 0;
      const until = minutes ? ` for ${minutes} more minute${minutes === 1 ? "" : "s"}` : "";
      return `You're muted in ${room}${until}: your message was not sent.`;
    }
    case "banned":
      return `You're banned from ${room}.`;
    case "unauthorized": // a token refused or expired (2.4)
      return `Your sign-in has expired or is not valid${message ? ` (${message})` : ""}. Open the chat again from the application that sent you here.`;
    case "kicked": // not an error: the `kicked` event (protocol 2.4)
      return ctx.by === "backend" || !ctx.by ? `You were removed from ${room}.` : `${ctx.by} removed you from ${room}.`;
    default:
      return message || "Something went wrong.";
  }
}
