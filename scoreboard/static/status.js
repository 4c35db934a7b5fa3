// The connection indicator in the top bar. States: connecting, live, reconnecting, public
// (read-only polling), offline. The colour comes from CSS by `data-state`; the words are for
// everyone, colour-blind users and screen readers included (the element is role="status").

export function showConnection(state, text) {
  const el = document.getElementById("connection");
  el.dataset.state = state;
  el.querySelector(".label").textContent = text;
}
