/**
 * BlockBackend: the user's handle on an image graph (QEMU's block-backend.c). Tools, library
 * callers and NBD exports hold one; a driver's children are plain nodes.
 *
 * State and who touches it:
 * - `root`: the node requests go to; set by attach(), cleared by detach() and close().
 * - `perm` / `sharedPerm`: what this user does with the root and lets other users of the same
 *   node do. Checked at attach (against every other backend on the node) and on each request.
 * - `inFlight`: requests this backend has accepted but not yet handed to the node (only the
 *   ones that wait for an asynchronous length); drain() and close() wait for them, the node
 *   counts the rest itself.
 *
 * Permissions and the register of each node's users live in backend-perm.ts; the root, attach,
 * detach and the checks every request passes in backend-root.ts (BlockBackendRoot, which
 * BlockBackend extends).
 *
 * Order of a request: argument and permission checks, then the bounds check against the
 * length (synchronously when the node knows it), then the node's request. Nothing reaches the
 * node when a check fails, so a refused write changes nothing. The root node is marked as
 * used by a backend (setParent('backend')): it may grow, as a format's file does, and the
 * bounds are the backend's; a protocol or filter root still counts its length in whole sectors.
 */
import { type BlockPerm, PERM_NAMES, checkShared, usersOf, validRange } from './backend-perm.js';
import { BlockBackendRoot } from './backend-root.js';

export type { BlockBackendOptions, BlockPerm } from './backend-perm.js';

import { BlockAIOCB, genericAioPool, type CompletionFunc } from './aio.js';
import {
  BDRV_SECTOR_SIZE,
  type BlockStatus,
  type OpenOptions,
  SENDFILE_DECLINED,
  type SendfileReply,
  type WriteFlags,
  type WriteZeroesFlags,
} from './driver.js';
import { BlockError, toBlockError } from './errors.js';
import { IOVector } from './iovec.js';
import { BlockDriverState, type ReopenOptions } from './node.js';
import { bdrvOpenOptions } from './open-options.js';
import type { FlatQDict, QDictInput } from './qdict.js';

export class BlockBackend extends BlockBackendRoot {
  /**
   * blk_new_open: open `filename` (protocol, format, backing chain) and attach it. Without
   * `perm`, a read-write open takes write and resize (qemu-io's truncate), a read-only one none.
   * `image` may also be a `json:` name or an options object (QEMU's QDict), with or without a
   * `filename` beside it (blk_new_open(filename, options): qemu-io's `open -o ... NAME`); a
   * root the options made read-only then refuses a read-write backend.
   */
  static async open(
    image: string | QDictInput | FlatQDict,
    options: OpenOptions & { perm?: BlockPerm; sharedPerm?: BlockPerm } = {},
    filename: string | null = null,
  ): Promise<BlockBackend> {
    const { perm, sharedPerm, ...openOpts } = options;
    const rw = !(openOpts.readOnly ?? false);
    const blk = new BlockBackend({ perm: perm ?? { write: rw, resize: rw }, sharedPerm });
    // Opened as a child: the node may grow, the backend's checks bound the user.
    const rootOpts: OpenOptions = { ...openOpts, child: true };
    const bs = typeof image === 'string' ? await BlockDriverState.open(image, rootOpts) : await bdrvOpenOptions(image, rootOpts, filename);
    try {
      blk.attach(bs);
    } catch (e) {
      await bs.close().catch(() => undefined);
      throw e;
    }
    blk.ownsRoot = true;
    return blk;
  }

  // ---------------------------------------------------------------------------------------
  // Requests

  /** The length users see: a protocol or filter root counts whole sectors (bdrv_getlength). */
  async getLength(): Promise<number> {
    return this.requireRoot('get_length').getLength();
  }

  pread(offset: number, buf: Uint8Array): Promise<void> {
    return this.request('read', offset, buf.length, null, (bs) => bs.pread(offset, buf));
  }

  preadv(offset: number, qiov: IOVector): Promise<void> {
    return this.request('read', offset, qiov.size, null, (bs) => bs.preadv(offset, qiov));
  }

  pwrite(offset: number, buf: Uint8Array, flags?: WriteFlags): Promise<void> {
    return this.request('write', offset, buf.length, 'write', (bs) => bs.pwrite(offset, buf, flags));
  }

  pwritev(offset: number, qiov: IOVector, flags?: WriteFlags): Promise<void> {
    return this.request('write', offset, qiov.size, 'write', (bs) => bs.pwritev(offset, qiov, flags));
  }

  /** blk_pwrite_compressed: an empty buffer asks the driver to align its file. */
  pwriteCompressed(offset: number, buf: Uint8Array): Promise<void> {
    return this.request('write_compressed', offset, buf.length, 'write', (bs) => bs.pwritevCompressed(offset, IOVector.from(buf)));
  }

  writeZeroes(offset: number, bytes: number, flags?: WriteZeroesFlags): Promise<void> {
    return this.request('write_zeroes', offset, bytes, 'write', (bs) => bs.writeZeroes(offset, bytes, flags));
  }

  /** Discard needs the write permission too, as in QEMU. */
  discard(offset: number, bytes: number): Promise<void> {
    return this.request('discard', offset, bytes, 'write', (bs) => bs.discard(offset, bytes));
  }

  async flush(): Promise<void> {
    await this.requireRoot('flush').flush();
  }

  /** Resize: needs the resize permission; the new size bounds later requests. */
  async truncate(size: number, prealloc?: string): Promise<void> {
    const bs = this.requireRoot('truncate');
    this.requirePerm('truncate', 'resize', bs);
    await bs.truncate(size, prealloc);
  }

  /** Status of the root layer; queries past the end are refused with EIO (as the node does). */
  blockStatus(offset: number, bytes: number): Promise<BlockStatus> {
    return this.request('block_status', offset, 0, null, (bs) => bs.blockStatus(offset, bytes));
  }

  blockStatusAbove(offset: number, bytes: number): Promise<BlockStatus & { depth: number }> {
    return this.request('block_status', offset, 0, null, (bs) => bs.blockStatusAbove(offset, bytes));
  }

  /**
   * pread now, synchronously, when the root reads without waiting (its preadvNow hook: a host
   * file's page cache): true when `buf` holds the bytes. False when nothing was done: pread
   * then reads, and reports whatever this declined (bounds, a closed backend, errors).
   */
  preadNow(offset: number, buf: Uint8Array): boolean {
    const bs = this.rootNode;
    if (this.closing || bs === null || !validRange(offset, buf.length)) return false;
    const len = bs.knownLength();
    return len !== null && offset <= len && len - offset >= buf.length && bs.preadvNow(offset, IOVector.from(buf));
  }

  /**
   * preadNow's bytes, sent as the data of a reply straight from the host file into a socket
   * (the root's sendfileNow hook: see SendfileReply); SENDFILE_DECLINED when nothing was sent.
   */
  sendfileNow(offset: number, bytes: number, reply: SendfileReply): number {
    const bs = this.rootNode;
    if (this.closing || bs === null || !validRange(offset, bytes)) return SENDFILE_DECLINED;
    const len = bs.knownLength();
    if (len === null || offset > len || len - offset < bytes) return SENDFILE_DECLINED;
    return bs.sendfileNow(offset, bytes, reply);
  }

  /** blockStatusAbove now, when the root has no backing file and answers now; else null. */
  blockStatusAboveNow(offset: number, bytes: number): (BlockStatus & { depth: number }) | null {
    const bs = this.rootNode;
    if (this.closing || bs === null || bs.backing !== null) return null;
    const st = bs.blockStatusNow(offset, bytes);
    return st === null ? null : { ...st, depth: 0 };
  }

  isAllocated(offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
    return this.request('is_allocated', offset, 0, null, (bs) => bs.isAllocated(offset, bytes));
  }

  isAllocatedAbove(base: BlockDriverState | null, offset: number, bytes: number): Promise<{ allocated: boolean; pnum: number }> {
    return this.request('is_allocated_above', offset, 0, null, (bs) => bs.isAllocatedAbove(base, offset, bytes));
  }

  // ---------------------------------------------------------------------------------------
  // AIO (sector based, as the node's)

  aioReadv(sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    return this.aioRw(false, sectorNum, qiov, nbSectors, cb);
  }

  aioWritev(sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    return this.aioRw(true, sectorNum, qiov, nbSectors, cb);
  }

  aioFlush(cb: CompletionFunc): BlockAIOCB {
    let bs: BlockDriverState;
    try {
      bs = this.requireRoot('aio_flush');
    } catch (e) {
      return this.aioFail(e, 'aio_flush', cb);
    }
    return bs.aioFlush(cb);
  }

  private aioRw(write: boolean, sectorNum: number, qiov: IOVector, nbSectors: number, cb: CompletionFunc): BlockAIOCB {
    const op = write ? 'aio_write' : 'aio_read';
    const offset = sectorNum * BDRV_SECTOR_SIZE;
    const bytes = nbSectors * BDRV_SECTOR_SIZE;
    let bs: BlockDriverState;
    let len: number | null;
    try {
      bs = this.requireRoot(op);
      if (!validRange(offset, bytes)) {
        throw new BlockError('EINVAL', `${op}: invalid sector ${sectorNum} count ${nbSectors}`, { op, path: bs.filename });
      }
      if (write) this.requirePerm(op, 'write', bs);
      len = bs.knownLength();
      // Not len - offset: past 2 GiB that difference is a heap number V8's lower tiers allocate.
      if (len !== null && offset + bytes > len) throw this.outOfBounds(op, bs, offset, bytes, len);
    } catch (e) {
      return this.aioFail(e, op, cb);
    }
    if (len !== null) return write ? bs.aioWritev(sectorNum, qiov, nbSectors, cb) : bs.aioReadv(sectorNum, qiov, nbSectors, cb);
    return this.aioSlow(op, bs, write, offset, bytes, qiov, cb);
  }

  /**
   * Length not known now: check it inside a generic AIOCB, then run the node's request. Apart
   * from aioRw, which would otherwise allocate these closures' context on every request.
   */
  private aioSlow(op: string, bs: BlockDriverState, write: boolean, offset: number, bytes: number, qiov: IOVector, cb: CompletionFunc): BlockAIOCB {
    return genericAioPool.get(bs, cb).start(() =>
      this.slowRequest(op, bs, offset, bytes, (node) => (write ? node.pwritev(offset, qiov) : node.preadv(offset, qiov))),
    );
  }

  /** Report a refused request through the callback, in a later microtask, never by throwing. */
  private aioFail(e: unknown, op: string, cb: CompletionFunc): BlockAIOCB {
    const err = toBlockError(e, { op });
    return genericAioPool.get(this.rootNode, cb).start(() => Promise.reject(err));
  }

  // ---------------------------------------------------------------------------------------
  // Drain, reopen, close

  /** blk_drain: wait for this backend's requests, then drain the root node and its children. */
  async drain(): Promise<void> {
    while (this.inFlight > 0) await this.drained.wait();
    await this.rootNode?.drain();
  }

  /**
   * Reopen the root with new flags. A change of mode moves the write and resize permissions
   * with it (qemu-io's reopen -r / -w); gaining them is checked against the node's other
   * users first. A reopen that leaves the mode alone keeps the permissions.
   */
  async reopen(opts: ReopenOptions): Promise<void> {
    const bs = this.requireRoot('reopen');
    const rw = opts.readOnly === undefined ? null : !opts.readOnly;
    if (rw === true && !this.perm.write) {
      for (const other of usersOf.get(bs) ?? []) {
        if (other !== this) checkShared({ write: true, resize: true }, this.sharedPerm, other, bs);
      }
    }
    await this.drain();
    await bs.reopen(opts);
    if (rw !== null) {
      this.perm.write = rw;
      this.perm.resize = rw;
    }
  }

  /**
   * blk_unref: drain, detach, and close the root if this backend opened it (a node given to
   * attach() stays open for whoever opened it). Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    await this.drain();
    const owned = this.ownsRoot;
    const bs = this.detach();
    if (bs && owned) await bs.close();
  }

  /** console.log shows a summary, not the internals. */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    const perms = PERM_NAMES.filter((p) => this.perm[p]).join(',') || 'read';
    const root = this.rootNode;
    return `BlockBackend { root: ${root ? `${root.driver.formatName} '${root.filename}'` : 'none'}, perm: ${perms}${this.closing ? ', closed' : ''} }`;
  }
}
