/*
 * The worker-thread back end of the I/O engine, for hosts where io_uring is missing or refused
 * (old kernels, seccomp filters in containers), or when BLOCKLAYER_IO_ENGINE=threads forces it.
 * Unlike libuv's pool, requests are handed over in batches (one lock and one wake-up per
 * event-loop turn) and completions come back through the same eventfd as io_uring's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "engine.h"

struct threads {
  struct eng_backend base;
  pthread_mutex_t lock;
  /*
   * Idle workers sleep on this futex word, bumped under the lock whenever work is queued, not
   * on a condition variable: glibc's pthread_cond_wait retakes the mutex marked contended, so
   * a woken worker's unlock made a futex call (waking nobody) before each request it took,
   * between the loop's submission and the write.
   */
  uint32_t work_seq;
  unsigned idle; /* workers between reading work_seq and waking up (under lock) */
  int eventfd;
  int stopping;
  /* Queued this turn, not yet visible to the workers (only the loop thread touches it). */
  int32_t local_head, local_tail;
  /* Visible to the workers (under lock). */
  int32_t todo_head, todo_tail;
  /* Finished, waiting to be reaped (under lock). */
  int32_t done_head, done_tail;
  unsigned nthreads;
  pthread_t *tids;
};

static void push(struct eng_req *reqs, int32_t *head, int32_t *tail, struct eng_req *r) {
  r->next = -1;
  if (*tail < 0) *head = (int32_t)r->slot;
  else reqs[*tail].next = (int32_t)r->slot;
  *tail = (int32_t)r->slot;
}

int64_t eng_run_sync(struct eng_req *r) {
  ssize_t n;
  switch (r->op) {
    case ENG_READ:
      do n = preadv(r->fd, r->iov, r->iovcnt, r->offset); while (n < 0 && errno == EINTR);
      return n < 0 ? -errno : n;
    case ENG_WRITE:
      do n = pwritev(r->fd, r->iov, r->iovcnt, r->offset); while (n < 0 && errno == EINTR);
      return n < 0 ? -errno : n;
    case ENG_DATASYNC:
      return fdatasync(r->fd) < 0 ? -errno : 0;
    case ENG_FALLOCATE:
      return fallocate(r->fd, r->mode, r->offset, r->length) < 0 ? -errno : 0;
    case ENG_ZERO_WRITE:
      /* The zeroing first and on its own: it would clear data written before it. Failed, the
       * writev is not tried (io_uring may try it: the caller expects either). */
      if (fallocate(r->fd, r->mode, r->offset, r->length) < 0) {
        r->head_failed = 1;
        return -errno;
      }
      do n = pwritev(r->fd, r->iov, r->iovcnt, r->write_offset); while (n < 0 && errno == EINTR);
      return n < 0 ? -errno : n;
    default:
      return -EINVAL;
  }
}

static void futex_wake(uint32_t *word, int n) {
  syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/*
 * Called with the lock held and nothing queued: sleep until work_seq moves past what it is
 * now. A bump between the unlock and the sleep makes the futex return at once: no wake-up is
 * lost.
 */
static void wait_for_work(struct threads *t) {
  uint32_t seq = t->work_seq;
  t->idle++;
  pthread_mutex_unlock(&t->lock);
  syscall(SYS_futex, &t->work_seq, FUTEX_WAIT_PRIVATE, seq, NULL, NULL, 0);
  pthread_mutex_lock(&t->lock);
  t->idle--;
}

/* With the lock held: work was queued (or stopping), n workers should look. How many to wake. */
static int bump_work(struct threads *t, unsigned n) {
  __atomic_store_n(&t->work_seq, t->work_seq + 1, __ATOMIC_RELAXED);
  return (int)(n < t->idle ? n : t->idle);
}

static void *worker(void *arg) {
  struct threads *t = arg;
  pthread_mutex_lock(&t->lock);
  for (;;) {
    while (t->todo_head < 0 && !t->stopping) wait_for_work(t);
    if (t->todo_head < 0) break; /* stopping, and nothing left to do */
    struct eng_req *r = &t->base.reqs[t->todo_head];
    t->todo_head = r->next;
    if (t->todo_head < 0) t->todo_tail = -1;
    pthread_mutex_unlock(&t->lock);
    r->result = eng_run_sync(r);
    pthread_mutex_lock(&t->lock);
    int was_empty = t->done_head < 0;
    push(t->base.reqs, &t->done_head, &t->done_tail, r);
    /*
     * One wake-up for the loop per batch of completions it has not seen yet, signalled without
     * the lock, so that the loop's reap does not find it held. Should the loop reap this batch
     * before the write, the wake-up finds nothing: harmless.
     */
    if (was_empty) {
      pthread_mutex_unlock(&t->lock);
      uint64_t one = 1;
      ssize_t w = write(t->eventfd, &one, sizeof one);
      (void)w; /* EAGAIN only when the counter is already non-zero: the loop will wake */
      pthread_mutex_lock(&t->lock);
    }
  }
  pthread_mutex_unlock(&t->lock);
  return NULL;
}

static int threads_queue(struct eng_backend *b, struct eng_req *r) {
  struct threads *t = (struct threads *)b;
  push(b->reqs, &t->local_head, &t->local_tail, r);
  return 0;
}

static void threads_flush(struct eng_backend *b) {
  struct threads *t = (struct threads *)b;
  if (t->local_head < 0) return;
  unsigned n = 0;
  for (int32_t i = t->local_head; i >= 0 && n < t->nthreads; i = b->reqs[i].next) n++;
  pthread_mutex_lock(&t->lock);
  if (t->todo_tail < 0) t->todo_head = t->local_head;
  else b->reqs[t->todo_tail].next = t->local_head;
  t->todo_tail = t->local_tail;
  int wake = bump_work(t, n);
  pthread_mutex_unlock(&t->lock);
  t->local_head = t->local_tail = -1;
  /*
   * Wake as many idle workers as there are requests, not all of them for one request; after
   * the unlock, so that a woken worker does not at once sleep again on the mutex we hold.
   */
  if (wake > 0) futex_wake(&t->work_seq, wake);
}

static int threads_reap(struct eng_backend *b, void (*done)(void *, struct eng_req *), void *ctx) {
  struct threads *t = (struct threads *)b;
  pthread_mutex_lock(&t->lock);
  int32_t i = t->done_head;
  t->done_head = t->done_tail = -1;
  pthread_mutex_unlock(&t->lock);
  int count = 0;
  while (i >= 0) {
    struct eng_req *r = &b->reqs[i];
    i = r->next; /* read before done(): the slot may be reused by a submission it makes */
    done(ctx, r);
    count++;
  }
  return count;
}

static void threads_destroy(struct eng_backend *b) {
  struct threads *t = (struct threads *)b;
  threads_flush(b);
  pthread_mutex_lock(&t->lock);
  t->stopping = 1;
  bump_work(t, t->nthreads);
  pthread_mutex_unlock(&t->lock);
  futex_wake(&t->work_seq, INT_MAX);
  /* The workers finish what was handed to them: the buffers stay valid until then. */
  for (unsigned i = 0; i < t->nthreads; i++) pthread_join(t->tids[i], NULL);
  pthread_mutex_destroy(&t->lock);
  free(t->tids);
  free(t);
}

static const struct eng_ops threads_ops = {"threads", threads_queue, threads_flush, threads_reap, threads_destroy};

struct eng_backend *eng_threads_create(unsigned nthreads, unsigned capacity, int eventfd, struct eng_req *reqs, int *err) {
  (void)capacity; /* the slot array bounds what is in flight */
  struct threads *t = calloc(1, sizeof *t);
  if (t == NULL || (t->tids = calloc(nthreads, sizeof *t->tids)) == NULL) {
    free(t);
    *err = ENOMEM;
    return NULL;
  }
  t->base.ops = &threads_ops;
  t->base.reqs = reqs;
  t->eventfd = eventfd;
  t->local_head = t->local_tail = t->todo_head = t->todo_tail = t->done_head = t->done_tail = -1;
  pthread_mutex_init(&t->lock, NULL);
  for (; t->nthreads < nthreads; t->nthreads++) {
    int e = pthread_create(&t->tids[t->nthreads], NULL, worker, t);
    if (e != 0) {
      if (t->nthreads > 0) break; /* fewer workers still work */
      pthread_mutex_destroy(&t->lock);
      free(t->tids);
      free(t);
      *err = e;
      return NULL;
    }
  }
  return &t->base;
}
