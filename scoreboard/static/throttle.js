// At most one UI update per 500 ms, whatever the update rate. Callers say
// "something changed"; the latest state is painted once the interval has passed since the last
// paint ended. Nothing queues up: many calls inside one interval are one paint. Counted from the
// end: a paint that took long (a busy phone) would otherwise shorten the gap the reader sees
// between one update showing and the next.

export function throttle(paint, intervalMs = 500) {
  let lastPaint = -Infinity;
  let timer = null;

  function run() {
    timer = null;
    paint();
    lastPaint = performance.now();
  }

  return function schedule() {
    if (timer !== null) return;
    const wait = Math.max(0, lastPaint + intervalMs - performance.now());
    timer = setTimeout(run, wait);
  };
}
