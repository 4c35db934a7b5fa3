// Reconnect delays: exponential with "equal jitter" (half fixed, half random), so a server
// restart is not met by every open page at the same instant, and a page never waits longer
// than the cap.

export class Backoff {
  constructor({ baseMs = 500, capMs = 30_000 } = {}) {
    this.baseMs = baseMs;
    this.capMs = capMs;
    this.attempt = 0;
  }

  /** The delay before the next try; each call doubles the window up to the cap. */
  next() {
    const window = Math.min(this.capMs, this.baseMs * 2 ** this.attempt);
    this.attempt += 1;
    return window / 2 + Math.random() * (window / 2);
  }

  /** Called once a connection has proven healthy. */
  reset() {
    this.attempt = 0;
  }
}
