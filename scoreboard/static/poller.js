// The read-only board of a visitor who is not signed in. The WebSocket needs a token, so a
// visitor polls GET /api/v1/leaderboard instead: every 3 s while the tab is in view, with
// backoff when the server does not answer. Events: `state`, `board` (detail: the response).

import { getLeaderboard } from "./api.js";
import { Backoff } from "./backoff.js";

const INTERVAL_MS = 3000;

export class Poller extends EventTarget {
  constructor() {
    super();
    this.timer = null;
    this.stopped = true;
    this.busy = false; // one request at a time, also when the tab comes back into view
    this.backoff = new Backoff({ baseMs: INTERVAL_MS, capMs: 30_000 });
    this.onVisible = () => {
      if (!document.hidden && !this.stopped) this.tick();
    };
  }

  start() {
    this.stopped = false;
    document.addEventListener("visibilitychange", this.onVisible);
    this.emit("state", { state: "connecting", text: "Connecting…" });
    this.tick();
  }

  stop() {
    this.stopped = true;
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.timer);
  }

  async tick() {
    clearTimeout(this.timer);
    if (document.hidden || this.busy) return; // a hidden tab costs nothing; onVisible resumes
    this.busy = true;
    let next = INTERVAL_MS;
    try {
      const body = await getLeaderboard();
      if (this.stopped) return;
      this.backoff.reset();
      this.emit("state", { state: "public", text: "Read-only — log in to play live" });
      this.emit("board", body);
    } catch {
      if (this.stopped) return;
      next = this.backoff.next();
      this.emit("state", { state: "offline", text: "Server unreachable — retrying…" });
    } finally {
      this.busy = false;
    }
    this.timer = setTimeout(() => this.tick(), next);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
