/*
 * The io_uring back end of the I/O engine, through the raw system calls (no liburing: nothing
 * to link or ship). Requests are written to the submission ring as the JS side issues them
 * and started in one io_uring_enter per event-loop turn (flush); the kernel signals
 * completions on the eventfd registered here, which libuv watches (engine.c).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/io_uring.h>

#include "engine.h"

struct uring {
  struct eng_backend base;
  int fd;
  unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
  unsigned *cq_head, *cq_tail, *cq_mask;
  struct io_uring_sqe *sqes;
  struct io_uring_cqe *cqes;
  void *sq_map, *cq_map;
  size_t sq_map_len, cq_map_len, sqes_len;
  unsigned sq_entries;
  unsigned unsubmitted; /* written to the ring, not yet handed to the kernel */
};

/* user_data of a zero-write's fallocate SQE: the slot with this bit. */
#define HEAD_BIT (1ULL << 32)

static int sys_setup(unsigned entries, struct io_uring_params *p) {
  return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
}

static int sys_register(int fd, unsigned opcode, const void *arg, unsigned nr) {
  return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr);
}

static void uring_unmap(struct uring *u) {
  if (u->sqes != NULL && u->sqes != MAP_FAILED) munmap(u->sqes, u->sqes_len);
  if (u->cq_map != NULL && u->cq_map != MAP_FAILED && u->cq_map != u->sq_map) munmap(u->cq_map, u->cq_map_len);
  if (u->sq_map != NULL && u->sq_map != MAP_FAILED) munmap(u->sq_map, u->sq_map_len);
  if (u->fd >= 0) close(u->fd);
}

/* Reads from this size up are copied by io-wq when other requests are in flight. */
#define ASYNC_READ_MIN (256 * 1024)

static size_t req_bytes(const struct eng_req *r) {
  size_t n = 0;
  for (int i = 0; i < r->iovcnt; i++) n += r->iov[i].iov_len;
  return n;
}

/*
 * Large cached reads complete inside io_uring_enter, on the loop's thread: with other requests
 * in flight they go to io-wq (IOSQE_ASYNC), whose workers copy while the loop serves
 * completions and submissions (convert's 1-2 MiB chunks: about a third of its loop's time);
 * small ones stay inline, a hand-off would cost more than the copy. Marked, they are unbound
 * io-wq work (below), which suits reads: they take no inode lock, so workers copy side by side.
 *
 * Writes are never marked. ext4 takes no non-blocking buffered write, so io_uring's own attempt
 * fails at once and hands the write to io-wq as work hashed on the inode: one worker writes a
 * file's queue in order. IOSQE_ASYNC queues a request before its file is looked up, so
 * io_uring cannot hash it: it became unbound work, and up to one worker per write in flight
 * took turns on the inode's lock, spinning on it beside the loop's thread on a 2-CPU machine.
 * Setting the flag after the tail was published is safe: without SQPOLL the kernel reads the
 * entries only inside io_uring_enter.
 */
static void uring_mark_async(struct uring *u) {
  unsigned tail = *u->sq_tail;
  for (unsigned i = tail - u->unsubmitted; i != tail; i++) {
    struct io_uring_sqe *sqe = &u->sqes[i & *u->sq_mask];
    struct eng_req *r = &u->base.reqs[sqe->user_data & ~HEAD_BIT];
    if (sqe->opcode == IORING_OP_READV && req_bytes(r) >= ASYNC_READ_MIN) {
      sqe->flags |= IOSQE_ASYNC;
      u->base.forced_async[r->op]++;
    }
  }
}

/*
 * A zero-write's two entries are published together, but a submission the kernel cuts short
 * (out of memory) may have started the fallocate alone, ending its link: its writev, next in
 * the ring, must then wait for everything before it (IOSQE_IO_DRAIN), or it could run first
 * and be zeroed. The kernel has not read the entry yet (see above).
 */
static void uring_keep_pair_order(struct uring *u) {
  if (u->unsubmitted == 0) return;
  struct io_uring_sqe *sqe = &u->sqes[(*u->sq_tail - u->unsubmitted) & *u->sq_mask];
  if (sqe->opcode == IORING_OP_WRITEV && u->base.reqs[sqe->user_data].op == ENG_ZERO_WRITE) sqe->flags |= IOSQE_IO_DRAIN;
}

static void uring_flush(struct eng_backend *b) {
  struct uring *u = (struct uring *)b;
  if (b->overlap && u->unsubmitted > 0) uring_mark_async(u);
  while (u->unsubmitted > 0) {
    int n = sys_enter(u->fd, u->unsubmitted, 0, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      /*
       * EAGAIN/EBUSY: the kernel is short of resources or the completion queue is full; the
       * entries stay in the ring and the next turn (after completions were reaped) retries.
       */
      return;
    }
    u->unsubmitted -= (unsigned)n;
    if (n == 0) return;
    uring_keep_pair_order(u);
  }
}

static struct io_uring_sqe *next_sqe(struct uring *u, unsigned tail, struct eng_req *r) {
  unsigned idx = tail & *u->sq_mask;
  struct io_uring_sqe *sqe = &u->sqes[idx];
  memset(sqe, 0, sizeof *sqe);
  sqe->fd = r->fd;
  sqe->user_data = r->slot;
  u->sq_array[idx] = idx;
  return sqe;
}

static void prep_rw(struct io_uring_sqe *sqe, int opcode, const struct eng_req *r, int64_t offset) {
  sqe->opcode = (uint8_t)opcode;
  sqe->addr = (uint64_t)(uintptr_t)r->iov;
  sqe->len = (unsigned)r->iovcnt;
  sqe->off = (uint64_t)offset;
}

static void prep_fallocate(struct io_uring_sqe *sqe, const struct eng_req *r) {
  /* fallocate's arguments in io_uring's encoding: mode in len, length in addr. */
  sqe->opcode = IORING_OP_FALLOCATE;
  sqe->off = (uint64_t)r->offset;
  sqe->addr = (uint64_t)r->length;
  sqe->len = (unsigned)r->mode;
}

static int uring_queue(struct eng_backend *b, struct eng_req *r) {
  struct uring *u = (struct uring *)b;
  unsigned tail = *u->sq_tail;
  unsigned head = __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE);
  unsigned need = r->op == ENG_ZERO_WRITE ? 2 : 1;
  /* Both entries of a zero-write go into the same submission, or neither. */
  if (tail - head + need > u->sq_entries) return -EAGAIN;
  struct io_uring_sqe *sqe = next_sqe(u, tail, r);
  switch (r->op) {
    case ENG_READ:
    case ENG_WRITE:
      prep_rw(sqe, r->op == ENG_READ ? IORING_OP_READV : IORING_OP_WRITEV, r, r->offset);
      break;
    case ENG_DATASYNC:
      sqe->opcode = IORING_OP_FSYNC;
      sqe->fsync_flags = IORING_FSYNC_DATASYNC;
      break;
    case ENG_FALLOCATE:
      prep_fallocate(sqe, r);
      break;
    case ENG_ZERO_WRITE:
      /*
       * The writev is linked to the fallocate: it starts once the zeroing is done (io-wq runs
       * it right after, in the same worker): one submission for both. Kernels differ on
       * whether a failed fallocate cancels the writev (6.18 runs it anyway): the caller treats
       * a failed zeroing as "the data may be written, the range not zeroed". No
       * IOSQE_CQE_SKIP_SUCCESS on the fallocate: a kernel that does not fail the link also
       * counts the failure as a success and skips its CQE. Both CQEs complete the request.
       */
      r->head_failed = 0;
      r->cqes_left = 2;
      prep_fallocate(sqe, r);
      sqe->user_data = r->slot | HEAD_BIT;
      sqe->flags = IOSQE_IO_LINK;
      prep_rw(next_sqe(u, tail + 1, r), IORING_OP_WRITEV, r, r->write_offset);
      break;
    default:
      return -EINVAL;
  }
  /* The entries must be complete before the kernel can see the new tail. */
  __atomic_store_n(u->sq_tail, tail + need, __ATOMIC_RELEASE);
  u->unsubmitted += need;
  return 0;
}

static int uring_reap(struct eng_backend *b, void (*done)(void *, struct eng_req *), void *ctx) {
  struct uring *u = (struct uring *)b;
  int count = 0;
  for (;;) {
    unsigned head = *u->cq_head;
    unsigned tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
    if (head == tail) break;
    while (head != tail) {
      struct io_uring_cqe *cqe = &u->cqes[head & *u->cq_mask];
      struct eng_req *r = &b->reqs[cqe->user_data & ~HEAD_BIT];
      int res = cqe->res;
      head++;
      /* Release the entry before calling out: the callback may submit more. */
      __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
      if (r->op == ENG_ZERO_WRITE) {
        /* A zero-write completes with its second CQE, in whichever order they come. */
        if (cqe->user_data & HEAD_BIT) {
          if (res < 0) {
            r->head_failed = 1;
            r->head_result = res;
          }
        } else {
          r->result = res;
        }
        if (--r->cqes_left > 0) continue;
        if (r->head_failed) r->result = r->head_result;
      } else {
        r->result = res;
      }
      done(ctx, r);
      count++;
    }
  }
  return count;
}

static void uring_destroy(struct eng_backend *b) {
  /* Closing the ring cancels what is in flight and waits for it in the kernel. */
  uring_unmap((struct uring *)b);
  free(b);
}

static const struct eng_ops uring_ops = {"io_uring", uring_queue, uring_flush, uring_reap, uring_destroy};

struct eng_backend *eng_uring_create(unsigned entries, int eventfd, struct eng_req *reqs, int *err) {
  struct uring *u = calloc(1, sizeof *u);
  if (u == NULL) {
    *err = ENOMEM;
    return NULL;
  }
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  /* A completion queue twice the submission queue: every slot in flight fits in it. */
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = entries * 2;
  u->fd = sys_setup(entries, &p);
  if (u->fd < 0) goto fail;
  /*
   * One mmap for both rings (5.4) and no lost completions (NODROP, 5.5); older kernels get
   * the worker threads instead.
   */
  if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_NODROP)) {
    errno = ENOSYS;
    goto fail;
  }
  u->sq_entries = p.sq_entries;
  u->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  u->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  if (u->cq_map_len > u->sq_map_len) u->sq_map_len = u->cq_map_len;
  u->cq_map_len = u->sq_map_len;
  u->sq_map = mmap(NULL, u->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_SQ_RING);
  if (u->sq_map == MAP_FAILED) goto fail;
  u->cq_map = u->sq_map;
  u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
  u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_SQES);
  if (u->sqes == MAP_FAILED) goto fail;
  char *sq = u->sq_map, *cq = u->cq_map;
  u->sq_head = (unsigned *)(sq + p.sq_off.head);
  u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
  u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
  u->sq_array = (unsigned *)(sq + p.sq_off.array);
  u->cq_head = (unsigned *)(cq + p.cq_off.head);
  u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
  u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
  u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
  if (sys_register(u->fd, IORING_REGISTER_EVENTFD, &eventfd, 1) < 0) goto fail;
  u->base.ops = &uring_ops;
  u->base.reqs = reqs;
  return &u->base;
fail:
  *err = errno != 0 ? errno : EIO;
  uring_unmap(u);
  free(u);
  return NULL;
}
