// "Your position": the signed-in player's rank and score, also when they are outside the top
// 10 (from /leaderboard/me, score_update frames, or their row in the top 10).

import { setNumber } from "./countup.js";

export function renderMe(me) {
  const panel = document.getElementById("me");
  panel.hidden = me === null;
  if (me === null) return;
  const rank = document.getElementById("me-rank");
  rank.textContent = me.rank ? `#${me.rank}` : "Not ranked yet";
  rank.dataset.rank = me.rank ? String(me.rank) : "";
  setNumber(document.getElementById("me-score"), me.score);
}
