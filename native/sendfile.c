/*
 * sendFileNow: a reply of a header and a host file's bytes, sent into a socket on the calling
 * thread with sendfile(2), for the NBD server's READs (src/nbd/read-now.ts). The kernel hands
 * the page-cache pages to a unix socket (and to TCP) by reference: the bytes are neither read
 * into a buffer of ours nor copied again into the socket.
 *
 *   sendFileNow(sock, head, fd, offset, length, spill, sndbuf) -> number
 *
 * Only when every page of [offset, offset + length) is in the page cache (cachestat(2)), so
 * that it never waits for the disk. Sends `head`, then the file's bytes, until done or the
 * socket is full (it is non-blocking). Returns:
 *   -2  no cachestat for this file here: the caller stops asking;
 *   -1  nothing was sent (not all cached, the socket failing): the caller sends the reply
 *       its usual way, which reports any error;
 *   n   the reply went out but for its last n bytes (0: all of it). A reply must go whole, so
 *       those n bytes (the rest of `head`, then of the file's) are in spill[0, n), to be
 *       queued on the socket; `spill` holds head.length + length bytes. They are read with a
 *       plain pread: the pages were cached a moment ago, a disk read is a rare race;
 *   -3  as n, but that read failed: the reply cannot be completed, the connection must close.
 *
 * A non-zero `sndbuf` first asks for a send buffer that large (SO_SNDBUF, which the kernel
 * caps at net.core.wmem_max); errors there are ignored. sendfile has no MSG_NOSIGNAL: a peer
 * gone raises SIGPIPE, which Node ignores, and the error then reaches the caller's own write.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#define NAPI_VERSION 8

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/sendfile.h>
#endif

#include <node_api.h>

#include "engine.h"

#define MAX_SAFE_INTEGER 9007199254740991.0

#if defined(__linux__) && !defined(__NR_cachestat)
/* cachestat(2) came with Linux 6.5; one number on every architecture. */
#define __NR_cachestat 451
#endif

struct blk_cachestat_range {
  uint64_t off;
  uint64_t len;
};

struct blk_cachestat {
  uint64_t nr_cache;
  uint64_t nr_dirty;
  uint64_t nr_writeback;
  uint64_t nr_evicted;
  uint64_t nr_recently_evicted;
};

static napi_value number(napi_env env, double v) {
  napi_value r;
  return napi_create_double(env, v, &r) == napi_ok ? r : NULL;
}

static int bytes_of(napi_env env, napi_value v, uint8_t **data, size_t *len) {
  napi_typedarray_type type;
  size_t byte_offset;
  napi_value ab;
  bool is_ta;
  void *p;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return 0;
  if (napi_get_typedarray_info(env, v, &type, len, &p, &ab, &byte_offset) != napi_ok) return 0;
  if (type != napi_uint8_array) return 0;
  *data = p;
  return 1;
}

static int safe_int(double d, double max) {
  return d >= 0 && d <= max && floor(d) == d;
}

#ifdef __linux__
/*
 * 1: every page of the range is cached; 0: not; -1: no cachestat for this file (an older
 * kernel, a seccomp filter that refuses unknown calls with EPERM, hugetlbfs).
 */
static int all_cached(int fd, uint64_t off, uint64_t len) {
  static long page;
  if (page == 0) page = sysconf(_SC_PAGESIZE);
  struct blk_cachestat_range r = {off, len};
  struct blk_cachestat cs;
  if (syscall(__NR_cachestat, fd, &r, &cs, 0) != 0) return errno == ENOSYS || errno == EPERM || errno == EOPNOTSUPP ? -1 : 0;
  uint64_t first = off / (uint64_t)page, end = (off + len + (uint64_t)page - 1) / (uint64_t)page;
  return cs.nr_cache >= end - first;
}

/* The unsent tail of the reply into spill: the rest of head, then the file's. 0, or -1. */
static int fill_spill(const uint8_t *head, size_t hlen, int fd, off_t offset, size_t len, size_t sent, uint8_t *spill) {
  size_t n = 0;
  if (sent < hlen) {
    memcpy(spill, head + sent, hlen - sent);
    n = hlen - sent;
    sent = hlen;
  }
  size_t done = sent - hlen;
  while (done < len) {
    ssize_t r = pread(fd, spill + n, len - done, offset + (off_t)done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    n += (size_t)r;
    done += (size_t)r;
  }
  return 0;
}
#endif

static napi_value send_file_now(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  double d_sock, d_fd, d_off, d_len, d_sndbuf;
  uint8_t *head, *spill;
  size_t hlen, slen;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (argc < 6 || napi_get_value_double(env, argv[0], &d_sock) != napi_ok || !bytes_of(env, argv[1], &head, &hlen) ||
      napi_get_value_double(env, argv[2], &d_fd) != napi_ok || napi_get_value_double(env, argv[3], &d_off) != napi_ok ||
      napi_get_value_double(env, argv[4], &d_len) != napi_ok || !bytes_of(env, argv[5], &spill, &slen) ||
      napi_get_value_double(env, argv[6], &d_sndbuf) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "expected (sock, head: Uint8Array, fd, offset, length, spill: Uint8Array, sndbuf)");
    return NULL;
  }
  if (!safe_int(d_sock, INT32_MAX) || !safe_int(d_fd, INT32_MAX) || !safe_int(d_off, MAX_SAFE_INTEGER) ||
      !safe_int(d_len, (double)SIZE_MAX) || !safe_int(d_sndbuf, INT32_MAX) || slen < hlen + (size_t)d_len) {
    napi_throw_range_error(env, "EINVAL", "sock, fd, offset and length must be non-negative integers; spill must hold the reply");
    return NULL;
  }
#ifdef __linux__
  int sock = (int)d_sock, fd = (int)d_fd;
  off_t offset = (off_t)d_off;
  size_t len = (size_t)d_len;
  int cached = all_cached(fd, (uint64_t)offset, (uint64_t)len);
  if (cached < 0) return number(env, -2);
  if (!cached) return number(env, -1);
  if (d_sndbuf > 0) {
    int v = (int)d_sndbuf;
    (void)setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  }
  size_t sent = 0;
  while (sent < hlen) {
    ssize_t r = send(sock, head + sent, hlen - sent, MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      /* A failing socket: the usual path reports it. A full one: all of it is spilled. */
      if (sent == 0 && errno != EAGAIN && errno != EWOULDBLOCK) return number(env, -1);
      break;
    }
    sent += (size_t)r;
  }
  if (sent == hlen) {
    off_t pos = offset;
    while (sent - hlen < len) {
      ssize_t r = sendfile(sock, fd, &pos, len - (sent - hlen));
      if (r < 0 && errno == EINTR) continue;
      /* The socket full (EAGAIN), an error, or end of file: the rest is spilled. */
      if (r <= 0) break;
      sent += (size_t)r;
    }
  }
  size_t rest = hlen + len - sent;
  if (rest == 0) return number(env, 0);
  if (fill_spill(head, hlen, fd, offset, len, sent, spill) != 0) return number(env, -3);
  return number(env, (double)rest);
#else
  (void)head;
  (void)spill;
  return number(env, -2);
#endif
}

napi_value blk_sendfile_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"sendFileNow", NULL, send_file_now, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
}
