/**
 * What every BlockBackend request passes before it reaches a node (QEMU's block-backend.c:
 * blk_insert_bs / blk_remove_bs and blk_check_byte_request): the root node the backend
 * holds, its permissions, and the checks of each request (root attached, range valid,
 * permission held, within the length). BlockBackend (backend.ts) extends this with the
 * requests themselves, AIO, drain, reopen and close.
 */
import { type BlockBackendOptions, type BlockPerm, type PermName, type PermUser, checkShared, usersOf, validRange } from './backend-perm.js';
import { CoQueue } from './coroutine.js';
import { BlockError, toBlockError } from './errors.js';
import type { BlockDriverState, NodeParent } from './node.js';

export class BlockBackendRoot {
  protected rootNode: BlockDriverState | null = null;
  /** The root's parent before attach(), restored by detach(). */
  protected rootParent: NodeParent = 'none';
  /** Opened by BlockBackend.open: close() closes it. A node given to attach() is the caller's. */
  protected ownsRoot = false;
  protected readonly perm: Required<BlockPerm>;
  protected readonly sharedPerm: Required<BlockPerm>;
  protected inFlight = 0;
  protected readonly drained = new CoQueue();
  protected closing: Promise<void> | null = null;

  /** blk_new: an empty backend; attach() gives it a root. */
  constructor(options: BlockBackendOptions = {}) {
    this.perm = { write: options.perm?.write ?? false, resize: options.perm?.resize ?? false };
    this.sharedPerm = { write: options.sharedPerm?.write ?? true, resize: options.sharedPerm?.resize ?? true };
  }

  /** blk_bs: the root node, null when none is attached. */
  get root(): BlockDriverState | null {
    return this.rootNode;
  }

  /** No write permission, or a read-only root (blk_is_read_only). */
  get readOnly(): boolean {
    return !this.perm.write || (this.rootNode?.readOnly ?? true);
  }

  /** This backend's permissions (a copy). */
  get permissions(): Required<BlockPerm> {
    return { ...this.perm };
  }

  /** What this backend lets other users of its root do (a copy). */
  get sharedPermissions(): Required<BlockPerm> {
    return { ...this.sharedPerm };
  }

  /**
   * blk_insert_bs: make `bs` the root. Refused when a root is attached, when the node is
   * read-only and write is wanted, or when another backend on the node does not share a
   * permission this one takes (or takes one this one does not share).
   */
  attach(bs: BlockDriverState): void {
    if (this.closing) throw this.closed('attach');
    if (this.rootNode) {
      throw new BlockError('EBUSY', `The block backend already has a root node ('${this.rootNode.filename}')`, { op: 'attach' });
    }
    if (!bs.isOpen) throw new BlockError('EBADF', `Node '${bs.filename}' is closed`, { op: 'attach', path: bs.filename });
    if (this.perm.write && bs.readOnly) {
      throw new BlockError('EPERM', 'Block node is read-only', { op: 'attach', path: bs.filename });
    }
    const users = usersOf.get(bs) ?? new Set<PermUser>();
    for (const other of users) checkShared(this.perm, this.sharedPerm, other, bs);
    users.add(this);
    usersOf.set(bs, users);
    this.rootParent = bs.setParent('backend');
    this.rootNode = bs;
    this.ownsRoot = false;
  }

  /** blk_remove_bs: detach the root and hand it back (still open); null when none. */
  detach(): BlockDriverState | null {
    const bs = this.rootNode;
    if (!bs) return null;
    usersOf.get(bs)?.delete(this);
    bs.setParent(this.rootParent);
    this.rootNode = null;
    this.ownsRoot = false;
    return bs;
  }

  // ---------------------------------------------------------------------------------------
  // Checks (blk_check_byte_request and the permission asserts of blk_co_pwritev)

  protected closed(op: string): BlockError {
    return new BlockError('EBADF', `${op}: the block backend is closed`, { op });
  }

  protected requireRoot(op: string): BlockDriverState {
    if (this.closing) throw this.closed(op);
    const bs = this.rootNode;
    if (!bs) throw new BlockError('ENOMEDIUM', 'No medium inserted', { op });
    return bs;
  }

  protected requirePerm(op: string, p: PermName, bs: BlockDriverState): void {
    if (!this.perm[p]) {
      throw new BlockError('EPERM', `${op}: the block backend was not given the '${p}' permission`, { op, path: bs.filename });
    }
  }

  protected outOfBounds(op: string, bs: BlockDriverState, offset: number, bytes: number, len: number): BlockError {
    return new BlockError('EIO', `${op}: request ${offset}+${bytes} is past the end of the image (${len} bytes)`, {
      op,
      offset,
      path: bs.filename,
    });
  }

  /**
   * Check a request and hand it to the node. When the node knows its length now, the node's
   * request starts inside this call (it counts itself in flight from there); otherwise the
   * request counts here while the length is awaited.
   */
  protected request<T>(
    op: string,
    offset: number,
    bytes: number,
    perm: PermName | null,
    run: (bs: BlockDriverState) => Promise<T>,
  ): Promise<T> {
    let bs: BlockDriverState;
    let len: number | null;
    try {
      bs = this.requireRoot(op);
      if (!validRange(offset, bytes)) {
        throw new BlockError('EINVAL', `${op}: invalid request offset ${offset} length ${bytes}`, { op, path: bs.filename });
      }
      if (perm !== null) this.requirePerm(op, perm, bs);
      len = bs.knownLength();
      if (len !== null && (offset > len || len - offset < bytes)) throw this.outOfBounds(op, bs, offset, bytes, len);
    } catch (e) {
      return Promise.reject(toBlockError(e, { op }));
    }
    if (len !== null) return run(bs);
    return this.slowRequest(op, bs, offset, bytes, run);
  }

  protected async slowRequest<T>(
    op: string,
    bs: BlockDriverState,
    offset: number,
    bytes: number,
    run: (bs: BlockDriverState) => Promise<T>,
  ): Promise<T> {
    this.inFlight++;
    try {
      const len = await bs.getLength();
      if (offset > len || len - offset < bytes) throw this.outOfBounds(op, bs, offset, bytes, len);
      return await run(bs);
    } finally {
      this.inFlight--;
      if (this.inFlight === 0) this.drained.restartAll();
    }
  }
}
