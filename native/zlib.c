/*
 * Compressed qcow2 clusters with the system zlib, on the libuv thread pool: qcow2's zlib
 * codec (block/qcow2-threads.c) done as QEMU does it, so that the bytes are qemu-img's and
 * several clusters compress at once while the event loop goes on.
 *
 *   deflateCluster(src, dst) -> Promise<number>
 *       raw deflate (window 12 bits, memLevel 9, Z_DEFAULT_COMPRESSION) of all of `src`
 *       into `dst`; the compressed length, or -1 when it does not fit in dst.length
 *       (qcow2_zlib_compress's -ENOMEM: the caller writes the cluster uncompressed).
 *   inflateCluster(src, dst) -> Promise<number>
 *       inflate raw deflate data from `src` until `dst` is full; dst.length, or -1 when the
 *       data ends (or is corrupt) before that. Bytes after the stream are ignored: a
 *       compressed cluster's last sector holds whatever follows it in the file.
 *   inflateClusters(src, dst, bounds) -> Promise<number>
 *       inflateCluster for n clusters in one job: cluster i from src[bounds[2i],
 *       +bounds[2i+1]) into the i-th of the n equal parts of dst (bounds: a Uint32Array of
 *       2n). The number of clusters inflated before the first one that falls short. One
 *       job for a run of clusters spares each its own hand-off to the pool and back (a
 *       convert of a compressed image paid about 12 us of main thread per cluster).
 *
 * The arguments are kept referenced (so neither is collected) until the promise
 * settles; neither may be touched by the caller before that.
 *
 * zlib is linked in statically (libz.a, symbols hidden; binding.gyp), not as libz.so.1: node
 * exports its own zlib (Chromium's, whose deflate picks other matches) under the same names,
 * and would take the place of our calls and of libz.so.1's calls to itself alike. The header is
 * node's (first on the include path) but the library the system's: z_stream is the same in
 * every zlib 1.x, and deflateInit2_ checks the major version only. Without libz.a at build
 * time (no zlib1g-dev) the functions are missing and the qcow2 driver uses pako.
 */
#define NAPI_VERSION 8

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <node_api.h>
#ifdef BLK_HAVE_ZLIB
#include <zlib.h>
#endif

#include "engine.h"

#ifdef BLK_HAVE_ZLIB

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref src_ref, dst_ref, bounds_ref;
  int inflate; /* 0: deflate, 1: inflate, 2: inflate n clusters */
  unsigned char *src, *dst;
  size_t src_len, dst_len;
  const uint32_t *bounds; /* inflate n: 2n (offset, length) pairs into src */
  size_t n;
  long result; /* bytes, -1 (does not fit / not enough data), or -2 (zlib failed to start) */
} ZlibJob;

/* qcow2_zlib_compress: one deflate(Z_FINISH) into a buffer of the room there is. */
static long deflate_one(const ZlibJob *job) {
  z_stream strm;
  memset(&strm, 0, sizeof strm);
  if (deflateInit2(&strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK) return -2;
  strm.next_in = job->src;
  strm.avail_in = (uInt)job->src_len;
  strm.next_out = job->dst;
  strm.avail_out = (uInt)job->dst_len;
  int ret = deflate(&strm, Z_FINISH);
  long r = ret == Z_STREAM_END ? (long)(job->dst_len - strm.avail_out) : -1;
  deflateEnd(&strm);
  return r;
}

/*
 * qcow2_zlib_decompress: a full output buffer is success even without the stream's end.
 * `strm` is initialised (inflateInit2) and reset here for the next cluster.
 */
static long inflate_into(z_stream *strm, unsigned char *src, size_t src_len, unsigned char *dst, size_t dst_len) {
  strm->next_in = src;
  strm->avail_in = (uInt)src_len;
  strm->next_out = dst;
  strm->avail_out = (uInt)dst_len;
  int ret = inflate(strm, Z_FINISH);
  long r = (ret == Z_STREAM_END || ret == Z_BUF_ERROR) && strm->avail_out == 0 ? (long)dst_len : -1;
  inflateReset(strm);
  return r;
}

static long inflate_one(const ZlibJob *job) {
  z_stream strm;
  memset(&strm, 0, sizeof strm);
  if (inflateInit2(&strm, -12) != Z_OK) return -2;
  long r = inflate_into(&strm, job->src, job->src_len, job->dst, job->dst_len);
  inflateEnd(&strm);
  return r;
}

/* One stream for all n clusters: inflateReset keeps its window, instead of one per cluster. */
static long inflate_n(const ZlibJob *job) {
  z_stream strm;
  size_t cs = job->dst_len / job->n, i;
  memset(&strm, 0, sizeof strm);
  if (inflateInit2(&strm, -12) != Z_OK) return -2;
  for (i = 0; i < job->n; i++) {
    if (inflate_into(&strm, job->src + job->bounds[2 * i], job->bounds[2 * i + 1], job->dst + i * cs, cs) < 0) break;
  }
  inflateEnd(&strm);
  return (long)i;
}

static void zlib_execute(napi_env env, void *data) {
  ZlibJob *job = data;
  (void)env;
  job->result = job->inflate == 2 ? inflate_n(job) : job->inflate ? inflate_one(job) : deflate_one(job);
}

/* Drop the job's references (those taken) and the job. */
static void job_free(napi_env env, ZlibJob *job) {
  if (job->src_ref != NULL) napi_delete_reference(env, job->src_ref);
  if (job->dst_ref != NULL) napi_delete_reference(env, job->dst_ref);
  if (job->bounds_ref != NULL) napi_delete_reference(env, job->bounds_ref);
  free(job);
}

static void zlib_complete(napi_env env, napi_status status, void *data) {
  ZlibJob *job = data;
  napi_value value = NULL;
  if (status != napi_ok || job->result == -2) {
    value = blk_errno_error(env, status == napi_cancelled ? EINTR : (job->result == -2 ? ENOMEM : EIO),
                            job->inflate ? "inflate" : "deflate");
    if (value != NULL) napi_reject_deferred(env, job->deferred, value);
  } else if (napi_create_double(env, (double)job->result, &value) == napi_ok) {
    napi_resolve_deferred(env, job->deferred, value);
  }
  napi_delete_async_work(env, job->work);
  job_free(env, job);
}

static int uint8_array(napi_env env, napi_value v, unsigned char **data, size_t *len) {
  bool is_ta;
  napi_typedarray_type type;
  napi_value ab;
  size_t byte_offset;
  void *p;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return 0;
  if (napi_get_typedarray_info(env, v, &type, len, &p, &ab, &byte_offset) != napi_ok) return 0;
  *data = p;
  /* zlib counts in uInt: clusters are at most 2 MiB, far below. */
  return type == napi_uint8_array && *len <= 0x7fffffff;
}

/* inflateClusters' bounds: 2n offsets and lengths, each cluster's bytes inside src. */
static int cluster_bounds(napi_env env, napi_value v, ZlibJob *job) {
  bool is_ta;
  napi_typedarray_type type;
  napi_value ab;
  size_t byte_offset, len, i;
  void *p;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return 0;
  if (napi_get_typedarray_info(env, v, &type, &len, &p, &ab, &byte_offset) != napi_ok) return 0;
  if (type != napi_uint32_array || len == 0 || len % 2 != 0 || job->dst_len % (len / 2) != 0) return 0;
  job->bounds = p;
  job->n = len / 2;
  for (i = 0; i < len; i += 2) {
    if (job->bounds[i] > job->src_len || job->bounds[i + 1] > job->src_len - job->bounds[i]) return 0;
  }
  return 1;
}

static napi_value zlib_start(napi_env env, napi_callback_info info, int inflate) {
  size_t argc = 3;
  napi_value argv[3], promise, name;
  ZlibJob *job;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  job = calloc(1, sizeof *job);
  if (job == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  if (argc < (inflate == 2 ? 3u : 2u) || !uint8_array(env, argv[0], &job->src, &job->src_len) ||
      !uint8_array(env, argv[1], &job->dst, &job->dst_len) || job->dst_len == 0 ||
      (inflate == 2 && !cluster_bounds(env, argv[2], job))) {
    free(job);
    napi_throw_type_error(env, "EINVAL",
                          inflate == 2 ? "expected (src: Uint8Array, dst: Uint8Array, bounds: Uint32Array), bounds inside src"
                                       : "expected (src: Uint8Array, dst: Uint8Array), dst not empty");
    return NULL;
  }
  job->inflate = inflate;
  if ((inflate == 2 && napi_create_reference(env, argv[2], 1, &job->bounds_ref) != napi_ok) ||
      napi_create_reference(env, argv[0], 1, &job->src_ref) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &job->dst_ref) != napi_ok ||
      napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, inflate ? "blocklayer:inflate" : "blocklayer:deflate", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, zlib_execute, zlib_complete, job, &job->work) != napi_ok) {
    job_free(env, job);
    return NULL;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_async_work(env, job->work);
    job_free(env, job);
    return NULL;
  }
  return promise;
}

static napi_value deflate_cluster(napi_env env, napi_callback_info info) { return zlib_start(env, info, 0); }
static napi_value inflate_cluster(napi_env env, napi_callback_info info) { return zlib_start(env, info, 1); }
static napi_value inflate_clusters(napi_env env, napi_callback_info info) { return zlib_start(env, info, 2); }

#endif /* BLK_HAVE_ZLIB */

napi_value blk_zlib_init(napi_env env, napi_value exports) {
#ifndef BLK_HAVE_ZLIB
  (void)env;
  return exports;
#else
  napi_property_descriptor props[] = {
    {"deflateCluster", NULL, deflate_cluster, NULL, NULL, NULL, napi_enumerable, NULL},
    {"inflateCluster", NULL, inflate_cluster, NULL, NULL, NULL, napi_enumerable, NULL},
    {"inflateClusters", NULL, inflate_clusters, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  return exports;
#endif
}
