// The WebSocket to the gateway: opt-in batching (`/ws?batch=1`, one JSON event per line),
// requests matched to their ack/error by `ref` with a timeout, and reconnection with
// exponential backoff and jitter. It knows nothing about rooms: app.js re-joins on "open".

export class ServerError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "ServerError";
    this.code = code;
  }
}

export class Connection {
  /**
   * @param {object} opts
   * @param {string} opts.url            ws:// or wss:// URL
   * @param {(gen:number)=>void} opts.onOpen            a new socket is open (generation number)
   * @param {(msg:object)=>void} opts.onEvent           every server event that is not an ack/error with a known ref
   * @param {(status:object)=>void} opts.onStatus       {state, retryAt?, attempt?}
   * @param {(code:number)=>boolean} [opts.onClose]     the server closed the socket with `code`;
   *                                                    false: do not reconnect (e.g. 4001, sign-in expired)
   */
  constructor({ url, onOpen, onEvent, onStatus, onClose, baseDelay = 1000, maxDelay = 30000, openTimeout = 10000 }) {
    this.url = url;
    this.onOpen = onOpen;
    this.onClose = onClose;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.baseDelay = baseDelay;
    this.maxDelay = maxDelay;
    this.openTimeout = openTimeout;
    this.ws = null;
    this.generation = 0;
    this.attempt = 0;
    this.state = "idle";
    this.stopped = true;
    this._refSeq = 0;
    this._pending = new Map(); // ref -> {resolve, reject, timer}
    this._retryTimer = null;
    this._openTimer = null;
    this._stableTimer = null;
    this._onOnline = () => this.state === "waiting" && this.reconnectNow();
    // The network went away: the socket is dead even if the browser has not noticed yet.
    this._onOffline = () => this.state === "open" && this.restart("offline");
    this._onVisible = () => document.visibilityState === "visible" && this.state === "waiting" && this.reconnectNow();
  }

  get isOpen() {
    return this.state === "open";
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    globalThis.addEventListener?.("online", this._onOnline);
    globalThis.addEventListener?.("offline", this._onOffline);
    globalThis.document?.addEventListener("visibilitychange", this._onVisible);
    this._connect();
  }

  /** Closes for good (no reconnect), e.g. when the user switches names. */
  stop() {
    this.stopped = true;
    clearTimeout(this._retryTimer);
    globalThis.removeEventListener?.("online", this._onOnline);
    globalThis.removeEventListener?.("offline", this._onOffline);
    globalThis.document?.removeEventListener("visibilitychange", this._onVisible);
    this._drop("stopped");
    this._setState("stopped");
  }

  /** Skips the wait before the next attempt (a "Reconnect now" button, the network coming back). */
  reconnectNow() {
    if (this.stopped || this.state === "open" || this.state === "connecting") return;
    clearTimeout(this._retryTimer);
    this._connect();
  }

  /** Drops a socket that looks dead (an ack never came) and reconnects after the usual backoff. */
  restart(reason = "restart") {
    if (this.stopped || !this.ws) return;
    this._drop(reason);
    this._scheduleRetry();
  }

  /** Sends one event with a ref; resolves with the ack's data, rejects with ServerError or a transport error. */
  request(event, data, { timeout = 15000 } = {}) {
    if (this.state !== "open" || !this.ws) return Promise.reject(new ServerError("offline", "not connected"));
    const ref = `${this.generation}.${++this._refSeq}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new ServerError("timeout", `no answer to ${event} within ${timeout} ms`));
      }, timeout);
      this._pending.set(ref, { resolve, reject, timer, event });
      try {
        this.ws.send(JSON.stringify({ event, data, ref }));
      } catch (err) {
        clearTimeout(timer);
        this._pending.delete(ref);
        reject(new ServerError("offline", String(err)));
      }
    });
  }

  // ---- internals -----------------------------------------------------------------------------

  _setState(state, extra = {}) {
    this.state = state;
    this.onStatus?.({ state, attempt: this.attempt, ...extra });
  }

  _connect() {
    clearTimeout(this._retryTimer);
    const gen = ++this.generation;
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    this._openTimer = setTimeout(() => {
      if (this.ws === ws && ws.readyState !== WebSocket.OPEN) this.restart("open timeout");
    }, this.openTimeout);

    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      clearTimeout(this._openTimer);
      this._setState("open");
      // Only a socket that stays up for a while resets the backoff, so a gateway that accepts and
      // immediately drops connections still sees clients back off.
      this._stableTimer = setTimeout(() => { this.attempt = 0; }, 5000);
      this.onOpen?.(gen);
    });
    ws.addEventListener("message", (e) => {
      if (this.ws !== ws || typeof e.data !== "string") return;
      // batch=1: several events per frame, one JSON object per line.
      for (const line of e.data.split("\n")) {
        if (!line.trim()) continue;
        let msg;
        try {
          msg = JSON.parse(line);
        } catch {
          continue;
        }
        if (msg && typeof msg === "object") this._dispatch(msg);
      }
    });
    ws.addEventListener("close", (e) => {
      if (this.ws !== ws) return;
      this._drop("closed");
      if (this.onClose?.(e.code) === false) this.stop();
      else if (!this.stopped) this._scheduleRetry();
    });
    ws.addEventListener("error", () => {
      // A "close" event always follows; nothing to do here.
    });
  }

  _dispatch(msg) {
    if ((msg.event === "ack" || msg.event === "error") && typeof msg.ref === "string") {
      const waiter = this._pending.get(msg.ref);
      if (waiter) {
        this._pending.delete(msg.ref);
        clearTimeout(waiter.timer);
        if (msg.event === "ack") waiter.resolve(msg.data ?? {});
        else waiter.reject(new ServerError(msg.data?.code || "internal", msg.data?.message || ""));
        return;
      }
      if (msg.event === "ack") return; // a late ack of a request that already timed out
    }
    this.onEvent?.(msg);
  }

  /** Forgets the current socket and fails its outstanding requests. */
  _drop(reason) {
    clearTimeout(this._openTimer);
    clearTimeout(this._stableTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try {
        ws.close(1000, reason.slice(0, 100));
      } catch {
        /* already closed */
      }
    }
    for (const [, waiter] of this._pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new ServerError("offline", "connection closed"));
    }
    this._pending.clear();
  }

  _scheduleRetry() {
    if (this.stopped) return;
    clearTimeout(this._retryTimer);
    // Exponential backoff with "equal jitter": half the window fixed, half random, so a gateway
    // restart does not bring every client back in the same instant.
    const window = Math.min(this.maxDelay, this.baseDelay * 2 ** this.attempt);
    const delay = Math.round(window / 2 + Math.random() * (window / 2));
    this.attempt = Math.min(this.attempt + 1, 16);
    const offline = globalThis.navigator?.onLine === false;
    const retryAt = Date.now() + delay;
    this._setState("waiting", { retryAt, offline });
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }
}
