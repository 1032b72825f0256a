/*
 * blocklayer_seek: lseek(SEEK_DATA / SEEK_HOLE) for the file driver. Node's fs has no lseek, and
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
 * lseek moves the descriptor's file position; the file driver only does positioned I/O
 * (pread/pwrite), so that position is never used.
 *
 * Plain Node-API (C, node_api.h): no node-addon-api dependency, ABI-stable across Node versions.
 */
#define _GNU_SOURCE /* SEEK_DATA / SEEK_HOLE in glibc's <unistd.h> */
#define _FILE_OFFSET_BITS 64
#define NAPI_VERSION 8

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <node_api.h>

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
    default: return "EIO";
  }
}

/* Throws a system error; callers return NULL right after. */
static void throw_errno(napi_env env, int err) {
  napi_value code, msg, error, errnum, syscall;
  const char *name = errno_name(err);
  char text[256];
  snprintf(text, sizeof text, "%s: lseek: %s", name, strerror(err));
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok) {
    napi_throw_error(env, name, text);
    return;
  }
  if (napi_create_int32(env, -err, &errnum) == napi_ok) napi_set_named_property(env, error, "errno", errnum);
  if (napi_create_string_utf8(env, "lseek", NAPI_AUTO_LENGTH, &syscall) == napi_ok) {
    napi_set_named_property(env, error, "syscall", syscall);
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

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
