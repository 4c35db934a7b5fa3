// The action buttons: one per catalogue entry (GET /api/v1/actions/types). A click sends an
// `action` frame over the socket with a fresh nonce; the outcome comes back as `action_result`
// frames (accepted, then completed / rejected / failed). The catalogue's cooldown is shown on
// the button; a rate-limit refusal (HTTP's 429, `rate_limit_exceeded` on the socket) blocks
// every button for the `retry_after` the server gave and says so.
//
// Buttons stay focusable while blocked (aria-disabled, not disabled), so keyboard focus is not
// lost after a click.

const SECOND = 1000;

const label = (type) => type.charAt(0).toUpperCase() + type.slice(1).replaceAll("_", " ");

function nonce() {
  return crypto.randomUUID().replaceAll("-", ""); // 32 of [0-9a-f]: inside the 8–64 allowed
}

/** Values for the catalogue's declared field types; the server alone decides the points. */
function actionData(fields) {
  const data = {};
  for (const [name, type] of Object.entries(fields)) {
    if (type === "integer") data[name] = 1;
    else if (type === "unix_seconds") data[name] = Math.floor(Date.now() / SECOND);
    else if (name === "day" || name === "date") data[name] = new Date().toISOString().slice(0, 10);
    else data[name] = `${name.replace(/_id$/, "")}-${nonce().slice(0, 8)}`;
  }
  return data;
}

export class Actions {
  constructor(send) {
    this.send = send; // (frame) => bool: false when the socket is not live
    this.section = document.getElementById("actions");
    this.container = document.getElementById("action-buttons");
    this.status = document.getElementById("action-status");
    this.buttons = new Map(); // action type -> {button, type, readyAt}
    this.blockedUntil = 0; // a rate limit from the server: every button waits
    this.pending = new Map(); // nonce -> action type
    this.rateLimited = false;
    this.online = false;
    this.ticker = null;
  }

  setTypes(types) {
    this.container.replaceChildren();
    this.buttons.clear();
    for (const type of types) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "action";
      button.dataset.actionType = type.action_type;
      button.addEventListener("click", () => this.perform(type.action_type));
      this.container.append(button);
      this.buttons.set(type.action_type, { button, type, readyAt: 0 });
    }
    this.refresh();
  }

  show(visible) {
    this.section.hidden = !visible;
  }

  /** Whether the socket is live; actions wait for it. */
  setOnline(online) {
    this.online = online;
    this.refresh();
  }

  perform(actionType) {
    const entry = this.buttons.get(actionType);
    if (!entry || this.waitMs(entry) > 0 || !this.online) return;
    const frame = {
      type: "action",
      action_type: actionType,
      action_data: actionData(entry.type.fields),
      nonce: nonce(),
    };
    if (!this.send(frame)) return;
    this.pending.set(frame.nonce, actionType);
    entry.readyAt = Date.now() + entry.type.cooldown_s * SECOND;
    this.say(`${label(actionType)}: sent…`);
    this.refresh();
  }

  /** An `action_result` frame: ours (pending) or from another tab of the same player. */
  onResult(result) {
    const actionType = this.pending.get(result.nonce);
    const name = actionType ? label(actionType) : "Action";
    if (result.status !== "accepted") this.pending.delete(result.nonce);
    switch (result.status) {
      case "accepted":
        this.say(`${name}: queued…`);
        break;
      case "completed":
        this.say(`${name}: +${result.score_delta} points — your score is ${result.new_score}.`);
        break;
      case "rejected":
        if (result.error === "rate_limit_exceeded") {
          const seconds = Math.max(1, Math.ceil(result.retry_after ?? 1));
          this.blockedUntil = Date.now() + seconds * SECOND;
          this.rateLimited = true;
          // Said once (a live region ticking every second would chatter); the buttons count down.
          this.say(`${name} was refused: too many actions. Try again in ${seconds} s.`, true);
        } else {
          this.say(`${name} was refused: ${result.message ?? result.error}.`);
        }
        break;
      default:
        this.say(`${name} failed: ${result.error ?? "unknown error"}. Please try again.`);
    }
    this.refresh();
  }

  waitMs(entry) {
    return Math.max(0, entry.readyAt - Date.now(), this.blockedUntil - Date.now());
  }

  /** Paints every button's state; ticks once a second while anything is counting down. */
  refresh() {
    clearTimeout(this.ticker);
    let counting = false;
    for (const entry of this.buttons.values()) {
      const wait = Math.ceil(this.waitMs(entry) / SECOND);
      const blocked = wait > 0 || !this.online;
      counting ||= wait > 0;
      entry.button.setAttribute("aria-disabled", String(blocked));
      entry.button.textContent =
        `${label(entry.type.action_type)} +${entry.type.points}` + (wait > 0 ? ` · ${wait} s` : "");
    }
    if (this.rateLimited && Date.now() >= this.blockedUntil) {
      this.rateLimited = false;
      this.say("You can play again.");
    }
    if (counting) this.ticker = setTimeout(() => this.refresh(), SECOND);
  }

  say(text, warning = false) {
    this.status.textContent = text;
    this.status.classList.toggle("warning", warning);
  }
}
