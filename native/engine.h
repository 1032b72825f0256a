/*
 * The I/O engine shared between its back ends: io_uring (uring.c) and our own worker threads
 * (threads.c), both completing through one eventfd that libuv watches (engine.c).
 */
#ifndef BLOCKLAYER_ENGINE_H
#define BLOCKLAYER_ENGINE_H

#include <stdint.h>
#include <sys/uio.h>

#include <node_api.h>

/* Operations, numbered as the JS side (src/drivers/file/engine.ts) sends them. */
enum eng_op { ENG_READ = 0, ENG_WRITE = 1, ENG_DATASYNC = 2, ENG_FALLOCATE = 3, ENG_ZERO_WRITE = 4 };

/*
 * ENG_ZERO_WRITE: fallocate(mode, offset, length), then pwritev of iov at write_offset, as
 * one request with one completion (the writev's count, or the first error). A failed
 * fallocate is reported with this flag added to the slot number: the range was not zeroed,
 * and the data may or may not have been written (io_uring may run the writev regardless).
 */
#define ENG_HEAD_FAILED 65536

/* Inline iovecs per request; longer vectors are allocated. */
#define ENG_INLINE_IOV 8

struct eng_req {
  int op;
  int fd;
  int mode;          /* fallocate mode */
  int iovcnt;
  int64_t offset;
  int64_t length;    /* fallocate length */
  int64_t write_offset; /* ENG_ZERO_WRITE: where the writev goes */
  int64_t result;    /* bytes, or -errno */
  int head_failed;   /* ENG_ZERO_WRITE: result is the fallocate's error */
  int head_result;   /* io_uring: the fallocate's error until both CQEs are in */
  int cqes_left;     /* io_uring: CQEs of a zero-write still to come */
  struct iovec *iov; /* inline_iov or malloc'ed; must live until completion (the kernel reads it) */
  struct iovec inline_iov[ENG_INLINE_IOV];
  uint32_t slot;
  int32_t next;      /* free list / worker queue link, -1 at the end */
};

struct eng_backend;

/* What a back end offers: queue a request (not yet started), start what is queued, reap. */
struct eng_ops {
  const char *name;
  /* 0, or -EAGAIN when the queue is full (flush and retry). */
  int (*queue)(struct eng_backend *b, struct eng_req *r);
  /* Start everything queued since the last flush (one syscall for the batch). */
  void (*flush)(struct eng_backend *b);
  /* Call done(ctx, slot, result) for each finished request; returns how many. */
  int (*reap)(struct eng_backend *b, void (*done)(void *ctx, struct eng_req *r), void *ctx);
  /* Stop: waits for what is in flight, frees everything. */
  void (*destroy)(struct eng_backend *b);
};

struct eng_backend {
  const struct eng_ops *ops;
  struct eng_req *reqs; /* the engine's slot array, for mapping completions back */
  /* Set before each flush: more than one request in flight, so large reads had better not run
   * inline. */
  int overlap;
  /* Requests handed straight to io-wq (IOSQE_ASYNC), by operation: engineStats reports them. */
  double forced_async[ENG_ZERO_WRITE + 1];
};

/* Run one request on the calling thread, blocking: its count or -errno (threads.c). */
int64_t eng_run_sync(struct eng_req *r);

/*
 * A small write issued with nothing else in flight, held until its turn's flush (inline.c).
 * Only the loop's thread touches it.
 */
struct eng_inline {
  struct eng_req *held;
  struct eng_backend *held_to; /* where it goes if another request joins it */
  struct eng_req *done;        /* written inline, not yet delivered */
  uint64_t resume_ns;          /* CLOCK_MONOTONIC: none held before this, after a slow one */
  uint64_t pause_ns;           /* how long the next slow one stops them */
  double writes;               /* written inline since the engine started (engineStats) */
  int enabled;
  int eventfd;
};

void eng_inline_init(struct eng_inline *l, int enabled, int eventfd);
/* Hold r (bound for b) if inline writes are on; 0: not held, queue it as usual. */
int eng_inline_hold(struct eng_inline *l, struct eng_req *r, struct eng_backend *b);
/* Another request joins: the held write, if any, goes to its back end now. */
void eng_inline_release(struct eng_inline *l);
/* At the flush: write the held request, if any, on this thread, and signal the eventfd. */
void eng_inline_run(struct eng_inline *l);
/* The request written inline since the last call, for the reap; NULL if none. */
struct eng_req *eng_inline_done(struct eng_inline *l);

/* Set up a back end completing on `eventfd`; NULL and *err = errno when it cannot. */
struct eng_backend *eng_uring_create(unsigned entries, int eventfd, struct eng_req *reqs, int *err);
struct eng_backend *eng_threads_create(unsigned nthreads, unsigned capacity, int eventfd, struct eng_req *reqs, int *err);

/* Adds engineStart, engineSubmit, engineError, engineStop, engineStats to the addon's exports. */
napi_value blk_engine_init(napi_env env, napi_value exports);

/* Adds deflateCluster, inflateCluster (zlib.c) to the addon's exports. */
napi_value blk_zlib_init(napi_env env, napi_value exports);

/* Adds memOffset (memalign.c) to the addon's exports. */
napi_value blk_memalign_init(napi_env env, napi_value exports);

/* Adds sendFileNow (sendfile.c) to the addon's exports. */
napi_value blk_sendfile_init(napi_env env, napi_value exports);

/* From seek.c: a Node-shaped system error (code, errno, syscall). */
napi_value blk_errno_error(napi_env env, int err, const char *syscall_name);

#endif
