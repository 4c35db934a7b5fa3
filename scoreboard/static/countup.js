// Scores count up to their new value instead of jumping. A value that changes again mid-count
// continues from what is shown. Users who ask for reduced motion get the number at once.

const DURATION_MS = 600;
const format = new Intl.NumberFormat();
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");
const running = new WeakMap();

export function setNumber(el, value) {
  const from = Number(el.dataset.value ?? value);
  el.dataset.value = String(value);
  cancelAnimationFrame(running.get(el));
  if (from === value || reducedMotion.matches) {
    el.textContent = format.format(value);
    return;
  }
  const start = performance.now();
  const step = (now) => {
    const t = Math.min(1, (now - start) / DURATION_MS);
    const eased = 1 - (1 - t) ** 3;
    el.textContent = format.format(Math.round(from + (value - from) * eased));
    if (t < 1) running.set(el, requestAnimationFrame(step));
  };
  running.set(el, requestAnimationFrame(step));
}
