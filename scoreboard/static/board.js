// The top-10 table. Rows are keyed by user id and reused, so a player who climbs keeps their
// row, and the move is animated with FLIP: measure where each row is (First), put the rows in
// their new order (Last), shift each one back to where it was (Invert) and let it glide to its
// new place (Play). Only transforms animate, so the browser does no layout per frame.

import { setNumber } from "./countup.js";

const MOVE_MS = 450;
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

export class Board {
  constructor(table) {
    this.table = table;
    this.body = table.tBodies[0];
    this.empty = document.getElementById("board-empty");
    this.rows = new Map(); // user id -> <tr>
    this.renders = 0;
  }

  /** Paints `entries` (rank order); `meId` is the signed-in player's id, or null. */
  render(entries, meId) {
    const before = new Map();
    for (const [id, row] of this.rows) before.set(id, row.getBoundingClientRect().top);

    const keep = new Set();
    for (const entry of entries) {
      keep.add(entry.user_id);
      const row = this.rows.get(entry.user_id) ?? this.createRow(entry.user_id);
      this.fill(row, entry, entry.user_id === meId);
      this.body.appendChild(row); // appending an existing row moves it: the new order
    }
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    this.empty.hidden = entries.length > 0;
    if (!reducedMotion.matches) this.play(before);

    // A counter the browser tests watch to check the repaint rate.
    this.renders += 1;
    this.table.dataset.renders = String(this.renders);
  }

  createRow(userId) {
    const row = document.createElement("tr");
    row.dataset.userId = String(userId);
    const rank = document.createElement("td");
    rank.className = "rank";
    const name = document.createElement("th"); // the row's header: a screen reader says the name
    name.scope = "row";
    name.className = "name";
    const username = document.createElement("span");
    username.className = "username";
    const you = document.createElement("span");
    you.className = "you";
    you.textContent = " (you)";
    name.append(username, you);
    const score = document.createElement("td");
    score.className = "score";
    row.append(rank, name, score);
    this.rows.set(userId, row);
    return row;
  }

  fill(row, entry, isMe) {
    const [rank, name, score] = row.cells;
    rank.textContent = String(entry.rank);
    name.querySelector(".username").textContent = entry.username; // text, never HTML
    name.querySelector(".you").hidden = !isMe;
    row.classList.toggle("me", isMe);
    if (isMe) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");
    setNumber(score, entry.score);
  }

  play(before) {
    for (const [id, row] of this.rows) {
      const top = before.get(id);
      if (top === undefined) {
        row.animate([{ opacity: 0 }, { opacity: 1 }], { duration: MOVE_MS, easing: "ease-out" });
        continue;
      }
      const dy = top - row.getBoundingClientRect().top;
      if (Math.abs(dy) < 1) continue;
      row.animate(
        [{ transform: `translateY(${dy}px)` }, { transform: "translateY(0)" }],
        { duration: MOVE_MS, easing: "cubic-bezier(0.2, 0.8, 0.2, 1)" },
      );
    }
  }
}
