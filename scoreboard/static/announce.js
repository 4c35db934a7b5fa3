// The polite live region: screen readers read rank changes when they are idle. One message
// per paint at most, so a busy board does not flood the listener.

const region = () => document.getElementById("announcer");

export function announce(message) {
  const el = region();
  if (!message || !el) return;
  // Clearing first makes the same sentence, said twice in a row, be read twice.
  el.textContent = "";
  requestAnimationFrame(() => {
    el.textContent = message;
  });
}
