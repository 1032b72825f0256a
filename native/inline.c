/*
 * Inline writes: a small write issued with nothing else in flight is held until its turn's
 * flush and, if no other request joined it, written by the loop's thread itself. Handing it
 * to a sleeping worker and back costs two wake-ups, and on a mostly idle machine each crosses
 * CPUs: on a VM that means the host waking a halted vCPU, which costs more than the copy of a
 * 64 KiB write (bench/RESULTS.md, "Depth 1"). QEMU's pool pays those wake-ups per request.
 *
 * The result goes back through the engine's eventfd like any other, from the loop's next
 * poll: timers and sockets get their turn between two inline writes, and no completion runs
 * inside the call that issued it. A write that held the thread for long (the kernel
 * throttling a writer of dirty pages, a journal commit) turns inline writes off for a while
 * (longer each time it happens again): the loop's thread must not stall where a worker could
 * wait instead.
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

/* Longer than this on the loop's thread (a 256 KiB copy takes some 40 us)... */
#define INLINE_SLOW_NS 5000000ull
/* ...and the next lone writes go to the back ends for this long, twice as long after each
 * slow one in a row, up to INLINE_PAUSE_MAX_NS: a write preempted once (a busy machine) costs
 * little, a file system that keeps blocking its writers sees few of them on the loop. */
#define INLINE_PAUSE_NS 20000000ull
#define INLINE_PAUSE_MAX_NS 2560000000ull

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void eng_inline_init(struct eng_inline *l, int enabled, int eventfd) {
  l->held = l->done = NULL;
  l->held_to = NULL;
  l->resume_ns = 0;
  l->pause_ns = INLINE_PAUSE_NS;
  l->writes = 0;
  l->enabled = enabled;
  l->eventfd = eventfd;
}

int eng_inline_hold(struct eng_inline *l, struct eng_req *r, struct eng_backend *b) {
  if (!l->enabled) return 0;
  if (l->resume_ns != 0) {
    if (now_ns() < l->resume_ns) return 0;
    l->resume_ns = 0;
  }
  l->held = r;
  l->held_to = b;
  return 1;
}

/* Write r here and make the loop's next poll report it. */
static void run(struct eng_inline *l, struct eng_req *r) {
  uint64_t start = now_ns();
  r->result = eng_run_sync(r);
  uint64_t end = now_ns();
  if (end - start <= INLINE_SLOW_NS) {
    l->pause_ns = INLINE_PAUSE_NS;
  } else {
    l->resume_ns = end + l->pause_ns;
    if (l->pause_ns < INLINE_PAUSE_MAX_NS) l->pause_ns *= 2;
  }
  l->writes++;
  l->done = r;
  uint64_t one = 1;
  ssize_t w = write(l->eventfd, &one, sizeof one);
  (void)w; /* EAGAIN only when the counter is already non-zero: the loop will wake */
}

void eng_inline_release(struct eng_inline *l) {
  struct eng_req *r = l->held;
  if (r == NULL) return;
  l->held = NULL;
  /* The first request of its turn: the back end's queue is empty and takes it; were it to
   * refuse, writing it here is still right. */
  if (l->held_to->ops->queue(l->held_to, r) != 0) run(l, r);
}

void eng_inline_run(struct eng_inline *l) {
  struct eng_req *r = l->held;
  if (r == NULL) return;
  l->held = NULL;
  run(l, r);
}

struct eng_req *eng_inline_done(struct eng_inline *l) {
  struct eng_req *r = l->done;
  l->done = NULL;
  return r;
}
