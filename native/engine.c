/*
 * The I/O engine: the file driver's reads, writes, datasyncs and fallocates, submitted from
 * the JS thread without libuv's thread pool. A request goes into a back end's queue
 * (io_uring's submission ring, or our worker threads' list), and everything queued in one
 * event-loop turn starts with one system call: right after completions were delivered (a
 * request issued by a completion's continuation starts at once), else from a uv_prepare
 * handle before the loop sleeps. Completions arrive on an eventfd watched by a uv_poll
 * handle, and are handed to JS in one call per batch, through a shared Float64Array of
 * (slot, result) pairs.
 *
 * The engine never references the JS buffers: the JS side keeps them (and the promise) in its
 * table of slots until the slot completes, so the memory the kernel writes stays alive.
 *
 *   engineStart(kind, onComplete, results[, inlineWrites]) -> 'io_uring' | 'threads'
 *       kind 'auto' tries io_uring then threads; 'io_uring' or 'threads' forces one (throws
 *       the system error when it cannot start). onComplete(count) reads `count` pairs.
 *       inlineWrites (default true): a lone small write runs on the loop's thread (inline.c).
 *   engineSubmit(op, fd, buffers, offset, length, mode[, writeOffset]) -> slot, or -1 when all
 *       slots are busy; op 4 (zero-write) is fallocate(mode, offset, length) then, after it,
 *       pwritev(buffers, writeOffset), as one request (engine.h)
 *   engineError(errno, syscall) -> a Node-shaped system error for a negative result
 *   engineStop() waits for everything in flight, delivers it, and stops (a later
 *       engineStart starts afresh)
 *   engineStats() -> { asyncReads, asyncWrites, canLink, writerWrites, inlineWrites }:
 *       requests the running back end handed straight to io-wq since it started (how tests
 *       see where a request went); canLink: zero-writes are one request (linked in io_uring,
 *       in order on a worker thread); writerWrites: small writes taken by the worker threads
 *       beside io_uring; inlineWrites: lone writes the loop's thread wrote itself
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <uv.h>

#include "engine.h"

/* Requests in flight at once per engine (the JS side keeps a backlog beyond it). */
#define ENG_SLOTS 256
#define ENG_THREADS 4
/* Linux's IOV_MAX: a longer vector is cut, and the request returns a short count. */
#define ENG_IOV_MAX 1024
/* Writes up to this size go to the worker threads beside io_uring (struct engine's writer),
 * or are written on the loop's thread when alone (inline.c). */
#define ENG_SMALL_WRITE (256 * 1024)

struct engine {
  napi_env env;
  uv_loop_t *loop;
  uv_poll_t poll;
  uv_prepare_t prepare;
  int eventfd;
  struct eng_backend *backend;
  /*
   * With io_uring under 'auto': our own worker threads beside it, for small writes. io_uring
   * hands a buffered write it cannot finish inline to io-wq, which runs one file's writes on
   * one worker and wakes it per request; two of our workers take small writes two at a time
   * for less (bench/RESULTS.md, the Analysis lead). Large writes keep io-wq's, which pays
   * there (convert's 1-2 MiB requests). Both complete through the one eventfd and slot array.
   */
  struct eng_backend *writer;
  double writer_writes; /* requests the writer took since the engine started (engineStats) */
  struct eng_inline lone; /* a small write alone in its turn, held for the flush (inline.c) */
  struct eng_req reqs[ENG_SLOTS];
  int32_t free_head;
  unsigned inflight; /* queued or running: keeps the loop alive */
  unsigned queued;   /* not yet flushed */
  napi_ref on_complete, results_ref;
  double *results;
  size_t results_len;
  napi_async_context actx;
  size_t pending; /* pairs recorded by the reap in progress */
  int handles_closed;
};

static struct engine *current(napi_env env) {
  void *data = NULL;
  return napi_get_instance_data(env, &data) == napi_ok ? data : NULL;
}

static void flush(struct engine *e) {
  if (e->queued == 0) return;
  /* Still alone at the end of its turn: the loop's thread writes it now. */
  eng_inline_run(&e->lone);
  e->queued = 0;
  e->backend->overlap = e->inflight > 1;
  e->backend->ops->flush(e->backend);
  if (e->writer != NULL) e->writer->ops->flush(e->writer);
  uv_prepare_stop(&e->prepare);
}

static void on_prepare(uv_prepare_t *h) {
  flush(h->data);
}

/* Record one completion and free its slot: JS reuses it only after reading the batch. */
static void record(void *ctx, struct eng_req *r) {
  struct engine *e = ctx;
  if (r->iov != r->inline_iov) free(r->iov);
  r->iov = NULL;
  if (2 * e->pending + 1 < e->results_len) {
    e->results[2 * e->pending] = (double)r->slot + (r->head_failed ? ENG_HEAD_FAILED : 0);
    e->results[2 * e->pending + 1] = (double)r->result;
    e->pending++;
  }
  r->next = e->free_head;
  e->free_head = (int32_t)r->slot;
  e->inflight--;
}

/* Reap everything finished and hand it to JS in one call. */
static void deliver(struct engine *e) {
  napi_env env = e->env;
  e->pending = 0;
  e->backend->ops->reap(e->backend, record, e);
  if (e->writer != NULL) e->writer->ops->reap(e->writer, record, e);
  struct eng_req *lone = eng_inline_done(&e->lone);
  if (lone != NULL) record(e, lone);
  if (e->inflight == 0) uv_unref((uv_handle_t *)&e->poll);
  if (e->pending == 0) return;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, count, result;
  if (napi_get_reference_value(env, e->on_complete, &fn) == napi_ok && fn != NULL &&
      napi_get_global(env, &recv) == napi_ok && napi_create_uint32(env, (uint32_t)e->pending, &count) == napi_ok) {
    /* make_callback runs the microtasks (promise continuations) before returning. */
    if (napi_make_callback(env, e->actx, recv, fn, 1, &count, &result) == napi_pending_exception) {
      napi_value err;
      if (napi_get_and_clear_last_exception(env, &err) == napi_ok) napi_fatal_exception(env, err);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  struct engine *e = h->data;
  (void)status;
  (void)events;
  uint64_t n;
  ssize_t r = read(e->eventfd, &n, sizeof n);
  (void)r; /* EAGAIN: a spurious wake-up, the reap finds nothing */
  deliver(e);
  /* What the continuations just issued starts now, not a loop turn later. */
  flush(e);
}

static void close_handles(struct engine *e);

/* Drain and stop the back end; the uv handles and the eventfd go with the engine itself. */
static void stop_backend(struct engine *e) {
  if (e->backend == NULL) return;
  flush(e);
  /* Wait for every request in flight: their buffers must not be released under the kernel. */
  while (e->inflight > 0) {
    struct pollfd p = {e->eventfd, POLLIN, 0};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) break;
    uint64_t n;
    ssize_t r = read(e->eventfd, &n, sizeof n);
    (void)r;
    deliver(e);
    flush(e); /* continuations may have issued more */
  }
  e->backend->ops->destroy(e->backend);
  e->backend = NULL;
  if (e->writer != NULL) e->writer->ops->destroy(e->writer);
  e->writer = NULL;
}

static void free_engine(uv_handle_t *h) {
  struct engine *e = h->data;
  /* Two handles close; the second callback frees. */
  if (++e->handles_closed < 2) return;
  close(e->eventfd);
  free(e);
}

static void close_handles(struct engine *e) {
  uv_poll_stop(&e->poll);
  uv_prepare_stop(&e->prepare);
  uv_close((uv_handle_t *)&e->poll, free_engine);
  uv_close((uv_handle_t *)&e->prepare, free_engine);
}

/* Environment teardown (process exit, a worker thread ending). */
static void cleanup_hook(void *arg) {
  struct engine *e = arg;
  stop_backend(e);
  if (e->on_complete != NULL) napi_delete_reference(e->env, e->on_complete);
  if (e->results_ref != NULL) napi_delete_reference(e->env, e->results_ref);
  if (e->actx != NULL) napi_async_destroy(e->env, e->actx);
  close_handles(e);
}

static napi_value throw_errno(napi_env env, int err, const char *syscall_name) {
  napi_value error = blk_errno_error(env, err, syscall_name);
  if (error != NULL) napi_throw(env, error);
  else napi_throw_error(env, "EIO", "io engine");
  return NULL;
}

static struct eng_backend *start_backend(struct engine *e, const char *kind, int *err) {
  struct eng_backend *b = NULL;
  if (strcmp(kind, "threads") != 0) {
    b = eng_uring_create(ENG_SLOTS, e->eventfd, e->reqs, err);
    if (b != NULL || strcmp(kind, "io_uring") == 0) return b;
  }
  return eng_threads_create(ENG_THREADS, ENG_SLOTS, e->eventfd, e->reqs, err);
}

static struct engine *create_engine(napi_env env) {
  struct engine *e = calloc(1, sizeof *e);
  if (e == NULL) return NULL;
  e->env = env;
  e->eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (e->eventfd < 0 || napi_get_uv_event_loop(env, &e->loop) != napi_ok ||
      uv_poll_init(e->loop, &e->poll, e->eventfd) != 0) {
    if (e->eventfd >= 0) close(e->eventfd);
    free(e);
    return NULL;
  }
  uv_prepare_init(e->loop, &e->prepare);
  e->poll.data = e->prepare.data = e;
  /* Neither handle keeps the process alive by itself; requests in flight do (deliver unrefs). */
  uv_unref((uv_handle_t *)&e->poll);
  uv_unref((uv_handle_t *)&e->prepare);
  uv_poll_start(&e->poll, UV_READABLE, on_poll);
  napi_set_instance_data(env, e, NULL, NULL);
  napi_add_env_cleanup_hook(env, cleanup_hook, e);
  return e;
}

static napi_value engine_start(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  char kind[16];
  size_t klen;
  bool inline_ok = true;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 3 || napi_get_value_string_utf8(env, argv[0], kind, sizeof kind, &klen) != napi_ok ||
      (argc > 3 && napi_get_value_bool(env, argv[3], &inline_ok) != napi_ok)) {
    napi_throw_type_error(env, "EINVAL", "expected (kind, onComplete, results[, inlineWrites])");
    return NULL;
  }
  napi_typedarray_type type;
  size_t len;
  void *data;
  bool is_ta = false;
  napi_is_typedarray(env, argv[2], &is_ta);
  if (!is_ta || napi_get_typedarray_info(env, argv[2], &type, &len, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || len < 2 * ENG_SLOTS) {
    napi_throw_type_error(env, "EINVAL", "results must be a Float64Array of 2 * slots");
    return NULL;
  }
  struct engine *e = current(env);
  if (e == NULL && (e = create_engine(env)) == NULL) return throw_errno(env, ENOMEM, "eventfd");
  if (e->backend != NULL) stop_backend(e);
  if (e->on_complete != NULL) napi_delete_reference(env, e->on_complete);
  if (e->results_ref != NULL) napi_delete_reference(env, e->results_ref);
  if (e->actx == NULL) {
    napi_value name;
    napi_create_string_utf8(env, "blocklayer:io", NAPI_AUTO_LENGTH, &name);
    napi_async_init(env, NULL, name, &e->actx);
  }
  napi_create_reference(env, argv[1], 1, &e->on_complete);
  napi_create_reference(env, argv[2], 1, &e->results_ref);
  e->results = data;
  e->results_len = len;
  e->free_head = -1;
  for (int i = ENG_SLOTS - 1; i >= 0; i--) {
    e->reqs[i].slot = (uint32_t)i;
    e->reqs[i].next = e->free_head;
    e->free_head = i;
  }
  eng_inline_init(&e->lone, inline_ok, e->eventfd);
  int err = 0;
  e->backend = start_backend(e, kind, &err);
  if (e->backend == NULL) return throw_errno(env, err, strcmp(kind, "threads") == 0 ? "pthread_create" : "io_uring_setup");
  /* Without its own workers, small writes go to io_uring too: nothing fails for want of them. */
  e->writer_writes = 0;
  if (strcmp(kind, "auto") == 0 && strcmp(e->backend->ops->name, "io_uring") == 0)
    e->writer = eng_threads_create(ENG_THREADS, ENG_SLOTS, e->eventfd, e->reqs, &err);
  napi_value name;
  napi_create_string_utf8(env, e->backend->ops->name, NAPI_AUTO_LENGTH, &name);
  return name;
}

static int get_bytes(napi_env env, napi_value v, struct iovec *iov) {
  napi_typedarray_type type;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &len, &data, NULL, NULL) != napi_ok || type != napi_uint8_array) return 0;
  iov->iov_base = data;
  iov->iov_len = len;
  return 1;
}

static napi_value engine_submit(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7], ret;
  int32_t op, fd, mode;
  double offset, length, write_offset = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 6 || napi_get_value_int32(env, argv[0], &op) != napi_ok || napi_get_value_int32(env, argv[1], &fd) != napi_ok ||
      napi_get_value_double(env, argv[3], &offset) != napi_ok || napi_get_value_double(env, argv[4], &length) != napi_ok ||
      napi_get_value_int32(env, argv[5], &mode) != napi_ok || op < ENG_READ || op > ENG_ZERO_WRITE || fd < 0 ||
      !(offset >= 0 && offset <= 9007199254740991.0) || !(length >= 0 && length <= 9007199254740991.0)) {
    napi_throw_type_error(env, "EINVAL", "expected (op, fd, buffers, offset, length, mode)");
    return NULL;
  }
  if (op == ENG_ZERO_WRITE && (argc < 7 || napi_get_value_double(env, argv[6], &write_offset) != napi_ok ||
                               !(write_offset >= 0 && write_offset <= 9007199254740991.0))) {
    napi_throw_type_error(env, "EINVAL", "expected a write offset");
    return NULL;
  }
  struct engine *e = current(env);
  if (e == NULL || e->backend == NULL) {
    napi_throw_error(env, "EINVAL", "the I/O engine is not started");
    return NULL;
  }
  if (e->free_head < 0) {
    napi_create_int32(env, -1, &ret);
    return ret;
  }
  struct eng_req *r = &e->reqs[e->free_head];
  /* Read now: a back end's queue may reuse the link (the threads' list does). */
  int32_t next_free = r->next;
  r->op = op;
  r->fd = fd;
  r->mode = mode;
  r->offset = (int64_t)offset;
  r->length = (int64_t)length;
  r->write_offset = (int64_t)write_offset;
  r->head_failed = 0;
  r->iovcnt = 0;
  r->iov = r->inline_iov;
  if (op == ENG_READ || op == ENG_WRITE || op == ENG_ZERO_WRITE) {
    bool is_array = false;
    napi_is_array(env, argv[2], &is_array);
    uint32_t n = 1;
    if (is_array && napi_get_array_length(env, argv[2], &n) != napi_ok) return NULL;
    if (n == 0) {
      napi_throw_range_error(env, "EINVAL", "no buffers");
      return NULL;
    }
    /* IOV_MAX at most, as libuv does: the count comes back short and the caller goes on. */
    if (n > ENG_IOV_MAX) n = ENG_IOV_MAX;
    if (n > ENG_INLINE_IOV && (r->iov = malloc(n * sizeof *r->iov)) == NULL) return throw_errno(env, ENOMEM, "malloc");
    for (uint32_t i = 0; i < n; i++) {
      napi_value el = argv[2];
      if (is_array && napi_get_element(env, argv[2], i, &el) != napi_ok) el = NULL;
      if (el == NULL || !get_bytes(env, el, &r->iov[i])) {
        if (r->iov != r->inline_iov) free(r->iov);
        napi_throw_type_error(env, "EINVAL", "buffers must be Uint8Arrays");
        return NULL;
      }
    }
    r->iovcnt = (int)n;
  }
  /* Joined by this request, a held write goes to its back end first, in issue order. */
  eng_inline_release(&e->lone);
  struct eng_backend *b = e->backend;
  size_t bytes = 0;
  for (int i = 0; i < r->iovcnt; i++) bytes += r->iov[i].iov_len;
  bool small = (op == ENG_WRITE || op == ENG_ZERO_WRITE) && bytes <= ENG_SMALL_WRITE;
  if (e->writer != NULL && op == ENG_WRITE && small) b = e->writer;
  if (b == e->writer) e->writer_writes++;
  /* Alone so far: held for the flush, which writes it here if nothing joins it. */
  int q = small && e->inflight == 0 && eng_inline_hold(&e->lone, r, b) ? 0 : b->ops->queue(b, r);
  if (q == -EAGAIN) {
    /* The submission ring is full: start what it holds, then there is room. */
    e->queued = 0;
    b->overlap = e->inflight > 1;
    b->ops->flush(b);
    q = b->ops->queue(b, r);
  }
  if (q != 0) {
    if (r->iov != r->inline_iov) free(r->iov);
    napi_create_int32(env, -1, &ret);
    return ret;
  }
  e->free_head = next_free;
  if (e->inflight++ == 0) uv_ref((uv_handle_t *)&e->poll);
  if (e->queued++ == 0) uv_prepare_start(&e->prepare, on_prepare);
  napi_create_int32(env, (int32_t)r->slot, &ret);
  return ret;
}

static napi_value engine_error(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t err;
  char syscall_name[32];
  size_t n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &err) != napi_ok ||
      napi_get_value_string_utf8(env, argv[1], syscall_name, sizeof syscall_name, &n) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "expected (errno, syscall)");
    return NULL;
  }
  return blk_errno_error(env, err, syscall_name);
}

static napi_value engine_stop(napi_env env, napi_callback_info info) {
  (void)info;
  struct engine *e = current(env);
  if (e != NULL) stop_backend(e);
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

static napi_value engine_stats(napi_env env, napi_callback_info info) {
  (void)info;
  struct engine *e = current(env);
  const double *n = e != NULL && e->backend != NULL ? e->backend->forced_async : NULL;
  napi_value o, reads, writes, link, small, inl;
  if (napi_create_object(env, &o) != napi_ok || napi_create_double(env, n != NULL ? n[ENG_READ] : 0, &reads) != napi_ok ||
      napi_create_double(env, n != NULL ? n[ENG_WRITE] : 0, &writes) != napi_ok ||
      napi_get_boolean(env, n != NULL, &link) != napi_ok ||
      napi_create_double(env, e != NULL ? e->writer_writes : 0, &small) != napi_ok ||
      napi_create_double(env, e != NULL ? e->lone.writes : 0, &inl) != napi_ok ||
      napi_set_named_property(env, o, "asyncReads", reads) != napi_ok ||
      napi_set_named_property(env, o, "asyncWrites", writes) != napi_ok ||
      napi_set_named_property(env, o, "canLink", link) != napi_ok ||
      napi_set_named_property(env, o, "writerWrites", small) != napi_ok ||
      napi_set_named_property(env, o, "inlineWrites", inl) != napi_ok) {
    return NULL;
  }
  return o;
}

napi_value blk_engine_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"engineStart", NULL, engine_start, NULL, NULL, NULL, napi_enumerable, NULL},
    {"engineSubmit", NULL, engine_submit, NULL, NULL, NULL, napi_enumerable, NULL},
    {"engineError", NULL, engine_error, NULL, NULL, NULL, napi_enumerable, NULL},
    {"engineStop", NULL, engine_stop, NULL, NULL, NULL, napi_enumerable, NULL},
    {"engineStats", NULL, engine_stats, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
