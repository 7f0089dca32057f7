// The HTTP history API, for paging back further than the WebSocket's msgHistory goes.
import { ServerError } from "./connection.js";

/**
 * GET /api/rooms/{room}/messages?limit=N&before=ID, always with the session as a bearer token
 * (private rooms require it). Resolves to the messages, oldest first.
 */
export async function fetchMessages(room, { before, limit = 50, session, signal } = {}) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (before) params.set("before", before);
  const headers = { Accept: "application/json" };
  if (session) headers.Authorization = `Bearer ${session}`;
  let response;
  try {
    response = await fetch(`/api/rooms/${encodeURIComponent(room)}/messages?${params}`, {
      headers,
      signal,
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new ServerError("network", "could not reach the server");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const code = body?.code || (response.status === 403 ? "room_private" : "http");
    throw new ServerError(code, body?.message || `HTTP ${response.status}`);
  }
  return Array.isArray(body?.messages) ? body.messages : [];
}
