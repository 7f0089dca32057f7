// Sign-in by token (PROTOCOL.md 2.4, docs/auth.md "Web client"): the application sends its user
// here as `/#token=<JWT>`; the page joins with the token instead of a name and session, and takes
// newer tokens from the application by postMessage before the old one expires.

const TOKEN_KEY = "roomcast.token";
const ASK_BEFORE_MS = 60_000; // ask the application for a new token this long before `exp`

/**
 * The token this tab signs in with: a `#token=` in the address bar (taken out of it at once, so
 * it is not bookmarked, shared, or left in the history), else the one this tab kept.
 * sessionStorage, not localStorage: a token is a bearer credential for one user, so it stays
 * with this tab (gone when the tab closes) and never signs in the other tabs, which may be
 * anonymous or someone else; the application mints a fresh one for every visit anyway.
 */
export function takeToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash !== null) {
    history.replaceState(history.state, "", location.pathname + location.search);
    if (fromHash) keepToken(fromHash);
    return fromHash || null;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function keepToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    /* private mode: this page still signs in, a reload needs a new link */
  }
}

export function forgetToken() {
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* ignore */
  }
}

/**
 * The token's claims, read without verifying them: only for what the page shows before the
 * server answers (the name) and for when to ask for a new token. The server's ack has the last
 * word on the name.
 */
export function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : {};
  } catch {
    return {};
  }
}

/** The name the page shows until the join's ack names the user. */
export function provisionalName(token) {
  const { name, sub } = claimsOf(token);
  return typeof name === "string" && name ? name : typeof sub === "string" && sub ? sub : "…";
}

/**
 * The refresh hook. The application that opened this page (window.opener) or frames it
 * (window.parent) is sent `{type: "roomcast:token-expiring", exp}` a minute before the token
 * expires, and answers with `{type: "roomcast:token", token}`; `onToken(token)` gets it. Only
 * those two windows are listened to; the server takes a refresh only for the same user
 * (`sub`), so another page cannot sign this one in as someone else this way.
 */
export function tokenRefresher(onToken) {
  let timer = null;
  const app = () => {
    const candidates = [window.opener, window.parent !== window ? window.parent : null];
    return candidates.filter((w) => w && !w.closed);
  };
  window.addEventListener("message", (e) => {
    if (!app().includes(e.source)) return;
    const data = e.data;
    if (data?.type === "roomcast:token" && typeof data.token === "string" && data.token) onToken(data.token);
  });
  return {
    /** (Re)arms the request for a new token for this one's `exp`. */
    watch(token) {
      clearTimeout(timer);
      const exp = Number(claimsOf(token).exp);
      if (!token || !Number.isFinite(exp)) return;
      const ask = () => {
        for (const w of app()) w.postMessage({ type: "roomcast:token-expiring", exp }, "*");
      };
      // at most a day: setTimeout's delay overflows past 24.8 days
      timer = setTimeout(ask, Math.min(86_400_000, Math.max(0, exp * 1000 - Date.now() - ASK_BEFORE_MS)));
    },
    stop() {
      clearTimeout(timer);
    },
  };
}
