/*
 * blocklayer_seek: lseek(SEEK_DATA / SEEK_HOLE) and fallocate for the file driver. Node's fs has no lseek, and
 * without it every byte of a sparse host file would look like data (QEMU's file-posix driver
 * finds holes the same way).
 *
 *   seekData(fd, offset) -> first data byte at or after offset, or -1 when there is none
 *                           (offset is in a trailing hole or at/after end of file)
 *   seekHole(fd, offset) -> first hole byte at or after offset (end of file counts as a hole),
 *                           or -1 when offset is at/after end of file
 *
 * Any other failure throws an Error whose `code` is the errno name (EINVAL, EBADF...), with
 * `errno` (negative, as Node's own errors have it) and `syscall: 'lseek'`.
 *
 * fallocate(2) for zeroing and discarding (Node's fs has no fallocate either; QEMU's file-posix
 * zeroes and discards with it). Each runs on the libuv thread pool (a zeroing fallocate may
 * write zeros into partial blocks and take a while) and returns a Promise<void>:
 *
 *   zeroRange(fd, offset, length)     FALLOC_FL_ZERO_RANGE (no KEEP_SIZE: may grow the file)
 *   punchHole(fd, offset, length)     FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
 *   allocateRange(fd, offset, length) mode 0: allocate, growing the file when past its end
 *
 * A failure rejects with an Error as above, `syscall: 'fallocate'`; EOPNOTSUPP is 'ENOTSUP', and
 * a host without fallocate (or without the flag) rejects every call with ENOTSUP.
 *
 *   preadNowait(fd, buffers, offset, size) -> bytes read now from the page cache
 *                           preadv2(RWF_NOWAIT) on the calling thread: fills `buffers` (an array
 *                           of Uint8Array, or one) with up to `size` bytes at `offset`, without
 *                           ever waiting for the disk. Returns the count (short when only part
 *                           is cached, 0 at end of file), -1 when nothing could be read without
 *                           blocking or the read failed (the caller reads on the thread pool,
 *                           which then reports the real error), -2 when this host cannot do
 *                           RWF_NOWAIT reads at all (the caller stops trying).
 *
 * lseek moves the descriptor's file position; the file driver only does positioned I/O
 * (pread/pwrite), so that position is never used.
 *
 * Plain Node-API (C, node_api.h): no node-addon-api dependency, ABI-stable across Node versions.
 */
#define _GNU_SOURCE /* SEEK_DATA / SEEK_HOLE in glibc's <unistd.h>, fallocate in <fcntl.h> */
#define _FILE_OFFSET_BITS 64
#define NAPI_VERSION 8

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <node_api.h>

#include "engine.h"

/* The largest integer a JS number holds exactly (Number.MAX_SAFE_INTEGER). */
#define MAX_SAFE_INTEGER 9007199254740991.0

static const char *errno_name(int err) {
  switch (err) {
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EOVERFLOW: return "EOVERFLOW";
    case ESPIPE: return "ESPIPE";
    case ENOTSUP: return "ENOTSUP";
#if defined(EOPNOTSUPP) && EOPNOTSUPP != ENOTSUP
    case EOPNOTSUPP: return "ENOTSUP";
#endif
    case ENOSYS: return "ENOSYS";
    case EINTR: return "EINTR";
    case EBUSY: return "EBUSY";
    case ENOSPC: return "ENOSPC";
    case EFBIG: return "EFBIG";
    case EPERM: return "EPERM";
    case EROFS: return "EROFS";
    case ENODEV: return "ENODEV";
    case ENOTTY: return "ENOTTY";
    case ETXTBSY: return "ETXTBSY";
    case EACCES: return "EACCES";
    default: return "EIO";
  }
}

/* A system error as Node shapes them: message "CODE: syscall: text", code, errno (negative), syscall. */
napi_value blk_errno_error(napi_env env, int err, const char *syscall_name) {
  napi_value code, msg, error, errnum, syscall;
  const char *name = errno_name(err);
  char text[256];
  snprintf(text, sizeof text, "%s: %s: %s", name, syscall_name, strerror(err));
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok) {
    return NULL;
  }
  if (napi_create_int32(env, -err, &errnum) == napi_ok) napi_set_named_property(env, error, "errno", errnum);
  if (napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &syscall) == napi_ok) {
    napi_set_named_property(env, error, "syscall", syscall);
  }
  return error;
}

/* Throws a system error; callers return NULL right after. */
static void throw_errno(napi_env env, int err) {
  napi_value error = blk_errno_error(env, err, "lseek");
  if (error == NULL) {
    napi_throw_error(env, errno_name(err), strerror(err));
    return;
  }
  napi_throw(env, error);
}

/* Reads (fd, offset) and checks them: fd a non-negative int32, offset a safe non-negative integer. */
static int get_args(napi_env env, napi_callback_info info, int *fd, off_t *offset) {
  size_t argc = 2;
  napi_value argv[2];
  napi_valuetype t0, t1;
  double fd_d, off_d;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < 2 || napi_typeof(env, argv[0], &t0) != napi_ok || napi_typeof(env, argv[1], &t1) != napi_ok ||
      t0 != napi_number || t1 != napi_number) {
    napi_throw_type_error(env, "EINVAL", "expected (fd: number, offset: number)");
    return 0;
  }
  if (napi_get_value_double(env, argv[0], &fd_d) != napi_ok || napi_get_value_double(env, argv[1], &off_d) != napi_ok) {
    return 0;
  }
  if (!(fd_d >= 0 && fd_d <= INT32_MAX && floor(fd_d) == fd_d)) {
    napi_throw_range_error(env, "EINVAL", "fd must be a non-negative integer");
    return 0;
  }
  if (!(off_d >= 0 && off_d <= MAX_SAFE_INTEGER && floor(off_d) == off_d)) {
    napi_throw_range_error(env, "EINVAL", "offset must be a non-negative safe integer");
    return 0;
  }
  *fd = (int)fd_d;
  *offset = (off_t)off_d;
  return 1;
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence) {
  int fd;
  off_t offset, r;
  napi_value result;
  if (!get_args(env, info, &fd, &offset)) return NULL;
  r = lseek(fd, offset, whence);
  if (r < 0) {
    int err = errno;
    /* ENXIO: nothing of the kind at or after offset (trailing hole, or past the end). */
    if (err != ENXIO) {
      throw_errno(env, err);
      return NULL;
    }
    r = -1;
  }
  if (napi_create_double(env, (double)r, &result) != napi_ok) return NULL;
  return result;
}

#if defined(SEEK_DATA) && defined(SEEK_HOLE)
static napi_value seek_data(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_DATA); }
static napi_value seek_hole(napi_env env, napi_callback_info info) { return do_seek(env, info, SEEK_HOLE); }
#else
/* A host without SEEK_DATA: the driver treats the error as "no information" (all data). */
static napi_value unsupported(napi_env env, napi_callback_info info) {
  (void)info;
  throw_errno(env, ENOTSUP);
  return NULL;
}
#define seek_data unsupported
#define seek_hole unsupported
#endif

/* ------------------------------------------------------------------------------------------ */
/* fallocate, off the JS thread */

#if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
#define HAVE_FALLOCATE 1
#endif

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int mode;
  off_t offset;
  off_t length;
  int err; /* 0, or the errno of the failed call */
} FallocJob;

static void falloc_execute(napi_env env, void *data) {
  FallocJob *job = data;
  (void)env;
#ifdef HAVE_FALLOCATE
  int r;
  /* A signal may interrupt a long zeroing; the call is safe to repeat. */
  do {
    r = fallocate(job->fd, job->mode, job->offset, job->length);
  } while (r < 0 && errno == EINTR);
  job->err = r < 0 ? errno : 0;
#else
  job->err = ENOTSUP;
#endif
}

static void falloc_complete(napi_env env, napi_status status, void *data) {
  FallocJob *job = data;
  napi_value value = NULL;
  if (status != napi_ok) {
    /* Cancelled or failed to run: reject rather than leave the promise pending forever. */
    value = blk_errno_error(env, status == napi_cancelled ? EINTR : EIO, "fallocate");
    if (value != NULL) napi_reject_deferred(env, job->deferred, value);
  } else if (job->err != 0) {
    value = blk_errno_error(env, job->err, "fallocate");
    if (value != NULL) napi_reject_deferred(env, job->deferred, value);
  } else if (napi_get_undefined(env, &value) == napi_ok) {
    napi_resolve_deferred(env, job->deferred, value);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

/* (fd, offset, length) checked like get_args; length must be > 0 (fallocate refuses 0). */
static napi_value do_falloc(napi_env env, napi_callback_info info, int mode, const char *what) {
  size_t argc = 3;
  napi_value argv[3], promise, name;
  double d[3];
  FallocJob *job;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 3) {
    napi_throw_type_error(env, "EINVAL", "expected (fd: number, offset: number, length: number)");
    return NULL;
  }
  for (int i = 0; i < 3; i++) {
    napi_valuetype t;
    if (napi_typeof(env, argv[i], &t) != napi_ok || t != napi_number ||
        napi_get_value_double(env, argv[i], &d[i]) != napi_ok) {
      napi_throw_type_error(env, "EINVAL", "expected (fd: number, offset: number, length: number)");
      return NULL;
    }
  }
  if (!(d[0] >= 0 && d[0] <= INT32_MAX && floor(d[0]) == d[0])) {
    napi_throw_range_error(env, "EINVAL", "fd must be a non-negative integer");
    return NULL;
  }
  if (!(d[1] >= 0 && d[1] <= MAX_SAFE_INTEGER && floor(d[1]) == d[1]) ||
      !(d[2] > 0 && d[2] <= MAX_SAFE_INTEGER && floor(d[2]) == d[2]) || d[1] + d[2] > MAX_SAFE_INTEGER) {
    napi_throw_range_error(env, "EINVAL", "offset and length must be safe integers, length > 0");
    return NULL;
  }
  job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  job->fd = (int)d[0];
  job->mode = mode;
  job->offset = (off_t)d[1];
  job->length = (off_t)d[2];
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, what, NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, falloc_execute, falloc_complete, job, &job->work) != napi_ok) {
    free(job);
    return NULL;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_async_work(env, job->work);
    free(job);
    return NULL;
  }
  return promise;
}

#ifdef HAVE_FALLOCATE
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif
#define MODE_ZERO_RANGE FALLOC_FL_ZERO_RANGE
#define MODE_PUNCH_HOLE (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
#else
#define MODE_ZERO_RANGE 0
#define MODE_PUNCH_HOLE 0
#endif

static napi_value zero_range(napi_env env, napi_callback_info info) {
  return do_falloc(env, info, MODE_ZERO_RANGE, "blocklayer:zeroRange");
}
static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return do_falloc(env, info, MODE_PUNCH_HOLE, "blocklayer:punchHole");
}
static napi_value allocate_range(napi_env env, napi_callback_info info) {
  return do_falloc(env, info, 0, "blocklayer:allocateRange");
}

/* ------------------------------------------------------------------------------------------ */
/* Reads served from the page cache without a thread hop */

/* Enough for any vector the block layer builds in one request; a longer one reads short. */
#define NOWAIT_MAX_IOV 64

static napi_value make_int(napi_env env, double v) {
  napi_value r;
  return napi_create_double(env, v, &r) == napi_ok ? r : NULL;
}

/* One Uint8Array's bytes; 0 when `v` is not a typed array. */
static int typed_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  napi_typedarray_type type;
  size_t length, byte_offset;
  napi_value ab;
  bool is_ta;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return 0;
  if (napi_get_typedarray_info(env, v, &type, &length, data, &ab, &byte_offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *len = length;
  return 1;
}

static napi_value pread_nowait(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  double d_fd, d_off, d_size;
  struct iovec iov[NOWAIT_MAX_IOV];
  int iovcnt = 0;
  bool is_array;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 4 || napi_get_value_double(env, argv[0], &d_fd) != napi_ok ||
      napi_get_value_double(env, argv[2], &d_off) != napi_ok || napi_get_value_double(env, argv[3], &d_size) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "expected (fd: number, buffers: Uint8Array[], offset: number, size: number)");
    return NULL;
  }
  if (!(d_fd >= 0 && d_fd <= INT32_MAX && floor(d_fd) == d_fd) ||
      !(d_off >= 0 && d_off <= MAX_SAFE_INTEGER && floor(d_off) == d_off) ||
      !(d_size >= 0 && d_size <= MAX_SAFE_INTEGER && floor(d_size) == d_size)) {
    napi_throw_range_error(env, "EINVAL", "fd, offset and size must be non-negative safe integers");
    return NULL;
  }
  size_t want = (size_t)d_size;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok) return NULL;
  if (is_array) {
    uint32_t n;
    if (napi_get_array_length(env, argv[1], &n) != napi_ok) return NULL;
    for (uint32_t i = 0; i < n && iovcnt < NOWAIT_MAX_IOV && want > 0; i++) {
      napi_value el;
      void *data;
      size_t len;
      if (napi_get_element(env, argv[1], i, &el) != napi_ok) return NULL;
      if (!typed_bytes(env, el, &data, &len)) {
        napi_throw_type_error(env, "EINVAL", "buffers must be Uint8Arrays");
        return NULL;
      }
      if (len == 0) continue;
      if (len > want) len = want;
      iov[iovcnt].iov_base = data;
      iov[iovcnt].iov_len = len;
      iovcnt++;
      want -= len;
    }
  } else {
    void *data;
    size_t len;
    if (!typed_bytes(env, argv[1], &data, &len)) {
      napi_throw_type_error(env, "EINVAL", "buffers must be Uint8Arrays");
      return NULL;
    }
    if (len > want) len = want;
    iov[0].iov_base = data;
    iov[0].iov_len = len;
    iovcnt = 1;
  }
#if defined(__linux__) && defined(RWF_NOWAIT)
  ssize_t r;
  do {
    r = preadv2((int)d_fd, iov, iovcnt, (off_t)d_off, RWF_NOWAIT);
  } while (r < 0 && errno == EINTR);
  if (r >= 0) return make_int(env, (double)r);
  /* Kernels or file systems without RWF_NOWAIT reads: never worth asking again. */
  if (errno == EOPNOTSUPP || errno == ENOSYS) return make_int(env, -2);
  return make_int(env, -1);
#else
  (void)iov;
  (void)iovcnt;
  return make_int(env, -2);
#endif
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_enumerable, NULL},
    {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"allocateRange", NULL, allocate_range, NULL, NULL, NULL, napi_enumerable, NULL},
    {"preadNowait", NULL, pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  if (blk_zlib_init(env, exports) == NULL) return NULL;
  if (blk_memalign_init(env, exports) == NULL) return NULL;
  if (blk_sendfile_init(env, exports) == NULL) return NULL;
  return blk_engine_init(env, exports);
}
