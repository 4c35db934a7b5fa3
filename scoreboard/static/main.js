// The page's wiring. A signed-in tab is live over the WebSocket; a visitor's tab polls the
// public board. Both feed one state, painted at most once per 500 ms.

import { Actions } from "./actions.js";
import { announce } from "./announce.js";
import { getActionTypes, getMe } from "./api.js";
import { beginLogin, completeLogin, Session } from "./auth.js";
import { Board } from "./board.js";
import { LiveConnection } from "./live.js";
import { renderMe } from "./me.js";
import { Poller } from "./poller.js";
import { initSignup } from "./signup.js";
import { showConnection } from "./status.js";
import { throttle } from "./throttle.js";

// Outside the top 10 the board says nothing about our rank; ask at most this often.
const ME_REFRESH_MS = 5000;
const CATALOGUE_RETRY_MS = 5000;

const state = { top: [], me: null, user: null }; // user: auth_ok's {user_id, username}
const board = new Board(document.getElementById("board"));
const actions = new Actions((frame) => live?.send(frame) ?? false);
let session = null;
let live = null;
let poller = null;
let shown = { leader: null, myRank: null }; // what the last paint showed, for announcements
let meAskedAt = -Infinity;
let meVersion = 0; // bumped by every fresher source, so a slow /me answer cannot win

const paint = throttle(() => {
  board.render(state.top, state.user?.user_id ?? null);
  renderMe(state.me);
  announceChanges();
});

function announceChanges() {
  const leader = state.top[0] ?? null;
  const myRank = state.me?.rank ?? null;
  const said = [];
  if (leader && shown.leader !== null && leader.user_id !== shown.leader) {
    said.push(`${leader.username} takes first place.`);
  }
  if (myRank && shown.myRank && myRank !== shown.myRank) {
    said.push(myRank < shown.myRank ? `You moved up to rank ${myRank}.` : `You dropped to rank ${myRank}.`);
  }
  shown = { leader: leader?.user_id ?? null, myRank };
  announce(said.join(" "));
}

function notice(text) {
  const el = document.getElementById("notice");
  el.textContent = text ?? "";
  el.hidden = !text;
}

function showAccount() {
  const whoami = document.getElementById("whoami");
  whoami.hidden = !session;
  whoami.textContent = state.user?.username ? `Signed in as ${state.user.username}` : "";
  document.getElementById("login").hidden = Boolean(session);
  document.getElementById("logout").hidden = !session;
  document.getElementById("signup").hidden = Boolean(session);
}

function onConnection({ state: connection, text }) {
  showConnection(connection, text);
  actions.setOnline(Boolean(live?.live));
}

// --- the signed-in player's own position -------------------------------------------------

function syncMe() {
  const mine = state.top.find((entry) => entry.user_id === state.user?.user_id);
  if (mine) {
    meVersion += 1;
    state.me = { rank: mine.rank, score: mine.score };
  } else if (performance.now() - meAskedAt >= ME_REFRESH_MS) {
    refreshMe();
  }
}

async function refreshMe() {
  if (!session) return;
  meAskedAt = performance.now();
  const version = meVersion;
  try {
    const me = await getMe(session.accessToken);
    if (version !== meVersion || !session) return;
    state.me = { rank: me.rank, score: me.score };
    paint();
  } catch {
    // Offline or mid-refresh: the socket's next update or reconnect asks again.
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case "leaderboard_update":
      state.top = frame.data.leaderboard;
      syncMe();
      paint();
      break;
    case "score_update":
      meVersion += 1;
      state.me = { rank: frame.data.rank, score: frame.data.new_score };
      paint();
      break;
    case "action_result":
      actions.onResult(frame.data);
      break;
  }
}

// --- the two views -------------------------------------------------------------------------

function goPublic(reason = null) {
  live?.stop();
  live = null;
  session = null;
  state.user = null;
  state.me = null;
  actions.show(false);
  showAccount();
  notice(reason);
  paint();
  poller = new Poller();
  poller.addEventListener("state", (event) => onConnection(event.detail));
  poller.addEventListener("board", (event) => {
    state.top = event.detail.leaderboard;
    paint();
  });
  poller.start();
}

async function goLive(signedIn) {
  poller?.stop();
  poller = null;
  session = signedIn;
  session.addEventListener("ended", (event) => goPublic(event.detail));
  live = new LiveConnection(session);
  session.addEventListener("refreshed", () => live?.reauth());
  live.addEventListener("state", (event) => onConnection(event.detail));
  live.addEventListener("connected", (event) => {
    state.user = event.detail;
    showAccount();
    actions.setOnline(true);
    refreshMe(); // the board after a reconnect comes with auth_ok; our own rank may not
  });
  live.addEventListener("frame", (event) => onFrame(event.detail));
  showAccount();
  actions.show(true);
  session.start();
  // Back in a tab whose token is due (a reload after a while): renew before connecting, rather
  // than have the socket refuse the old token.
  if (Date.now() >= session.refreshDue()) await session.refresh();
  live?.start();
}

async function loadCatalogue() {
  try {
    actions.setTypes((await getActionTypes()).action_types);
  } catch {
    setTimeout(loadCatalogue, CATALOGUE_RETRY_MS);
  }
}

async function main() {
  document.getElementById("login").addEventListener("click", () => beginLogin());
  document.getElementById("logout").addEventListener("click", async () => {
    if (!session) return;
    const revoked = session.logout(); // the page is public from here on
    notice("Logging out…");
    // Said once the server has revoked the refresh token (which it may ask to be retried).
    notice(
      (await revoked)
        ? "You are logged out."
        : "You are logged out here, but the server could not be reached: your session there " +
            "ends when it expires.",
    );
  });
  initSignup(beginLogin);
  loadCatalogue();

  let signedIn = Session.load();
  let loginFailure = null; // shown on the read-only page (a cancelled sign-in, a refusal)
  if (location.pathname === "/callback") {
    const url = new URL(location.href);
    history.replaceState(null, "", "/"); // the code and state leave the address bar at once
    try {
      signedIn = await completeLogin(url);
    } catch (error) {
      loginFailure = error.message;
    }
  }
  if (signedIn) goLive(signedIn);
  else goPublic(loginFailure);
}

main();
