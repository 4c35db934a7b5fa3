// The signed-in page's WebSocket (docs/api.md, section 4). One socket, authenticated by its first
// message and re-authenticated in place when the session refreshes its token; reconnected with
// backoff and jitter when it drops. The server sends the current top 10 right after `auth_ok`,
// so a reconnected page is current again without asking.
//
// Events: `state` (detail: {state, text}), `connected` (detail: auth_ok data, once per socket),
// `frame` (detail: any other frame: leaderboard_update, score_update, action_result).

import { Backoff } from "./backoff.js";

const PING_EVERY_MS = 25_000;
// No answer to a ping within this long: the connection is dead even if TCP has not noticed.
const PONG_WITHIN_MS = 10_000;
const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_FORBIDDEN = 4403;

const socketUrl = () =>
  `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/ws`;

export class LiveConnection extends EventTarget {
  constructor(session) {
    super();
    this.session = session;
    this.backoff = new Backoff();
    this.socket = null;
    this.authed = false;
    this.lastError = null;
    this.stopped = false;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.retryNow = () => {
      if (this.retryTimer !== null && !document.hidden) this.connect();
    };
  }

  start() {
    // Back online, or back in view: do not sit out the rest of a long backoff.
    addEventListener("online", this.retryNow);
    document.addEventListener("visibilitychange", this.retryNow);
    this.connect();
  }

  stop() {
    this.stopped = true;
    removeEventListener("online", this.retryNow);
    document.removeEventListener("visibilitychange", this.retryNow);
    clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000);
  }

  /** Sends a frame if the socket is open and authenticated; false otherwise. */
  send(frame) {
    if (!this.authed || this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  /** The session has a new access token: hand it to the open socket (docs/api.md, section 4). */
  reauth() {
    this.send({ type: "auth", token: this.session.accessToken });
  }

  get live() {
    return this.authed && this.socket?.readyState === WebSocket.OPEN;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.stopped) return;
    this.emitState(this.backoff.attempt ? "reconnecting" : "connecting", "Connecting…");
    const socket = new WebSocket(socketUrl());
    this.socket = socket;
    this.authed = false;
    this.lastError = null;
    socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: this.session.accessToken }));
    socket.onmessage = (event) => this.receive(socket, event.data);
    socket.onclose = (event) => this.closed(socket, event.code);
    // An error event is always followed by a close event, which does the work.
  }

  receive(socket, raw) {
    if (socket !== this.socket) return;
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    clearTimeout(this.pongTimer); // any frame proves the connection alive
    switch (frame.type) {
      case "auth_ok":
        if (!this.authed) {
          this.authed = true;
          this.backoff.reset();
          this.startHeartbeat();
          this.emitState("live", "Live");
          this.emit("connected", frame.data);
        }
        break;
      case "error":
        this.lastError = frame.error; // the close that follows says what to do with it
        break;
      case "pong":
        break;
      default:
        this.emit("frame", frame);
    }
  }

  async closed(socket, code) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.authed = false;
    this.stopHeartbeat();
    if (this.stopped) return;
    const error = this.lastError;
    if (code === CLOSE_FORBIDDEN || error === "token_revoked") {
      // Logged out elsewhere, or the token is someone else's: only a new login helps.
      this.session.end("Your session has ended. Please log in again.");
      return;
    }
    if (code === CLOSE_UNAUTHORIZED) {
      // Expired or refused token: connect again only with a fresh one.
      this.emitState("reconnecting", "Renewing session…");
      if (!(await this.session.refresh())) return;
      if (this.stopped) return;
    }
    const delay = this.backoff.next();
    this.emitState("reconnecting", "Connection lost — reconnecting…");
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.pingTimer = setInterval(() => {
      if (!this.send({ type: "ping", timestamp: Date.now() })) return;
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => this.abandon(), PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  }

  stopHeartbeat() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
  }

  /** A silent connection: stop waiting for its close handshake and reconnect now. */
  abandon() {
    const socket = this.socket;
    if (!socket) return;
    socket.onclose = null;
    socket.close();
    this.closed(socket, 1006);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  emitState(state, text) {
    this.emit("state", { state, text });
  }
}
