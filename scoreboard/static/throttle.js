// At most one UI update per 500 ms, whatever the update rate. Callers say
// "something changed"; the latest state is painted once the interval has passed since the last
// paint. Nothing queues up: many calls inside one interval are one paint.

export function throttle(paint, intervalMs = 500) {
  let lastPaint = -Infinity;
  let timer = null;

  function run() {
    timer = null;
    lastPaint = performance.now();
    paint();
  }

  return function schedule() {
    if (timer !== null) return;
    const wait = Math.max(0, lastPaint + intervalMs - performance.now());
    timer = setTimeout(run, wait);
  };
}
