/**
 * BlockBackend permissions (QEMU's BLK_PERM_* as block-backend.c takes them): what a user
 * does with its root node, what it lets other users of that node do, the register of which
 * backends use each node, and the conflict check attach() runs against every other user
 * before the new one is added (so a refused attach leaves the register as it was); also the
 * byte-range sanity check every request makes before its permission check.
 */
import type { BlockDriverState } from './node.js';
import { BlockError } from './errors.js';

/**
 * What a user does with its root node (QEMU's BLK_PERM_WRITE and BLK_PERM_RESIZE; consistent
 * reads are always taken). An absent field is false.
 */
export interface BlockPerm {
  /** Write, write zeroes, discard. */
  write?: boolean;
  /** truncate. */
  resize?: boolean;
}

export interface BlockBackendOptions {
  /** Taken by this user; default none (read-only use). */
  perm?: BlockPerm;
  /** Allowed to other users of the same node; default all (QEMU's BLK_PERM_ALL). */
  sharedPerm?: BlockPerm;
}

/** What the conflict check needs to know about another user of the node. */
export interface PermUser {
  readonly permissions: Required<BlockPerm>;
  readonly sharedPermissions: Required<BlockPerm>;
}

export type PermName = keyof BlockPerm;
export const PERM_NAMES: readonly PermName[] = ['write', 'resize'];

/** The backends attached to each node: the permission check at attach looks at them. */
export const usersOf = new WeakMap<BlockDriverState, Set<PermUser>>();

export function validRange(offset: number, bytes: number): boolean {
  return (
    Number.isSafeInteger(offset) && Number.isSafeInteger(bytes) && offset >= 0 && bytes >= 0 &&
    offset + bytes <= Number.MAX_SAFE_INTEGER
  );
}

/** Permission conflicts with another user of `bs`, both ways, worded as QEMU's bdrv_check_perm. */
export function checkShared(perm: Required<BlockPerm>, shared: Required<BlockPerm>, other: PermUser, bs: BlockDriverState): void {
  const theirs = other.permissions;
  const theyShare = other.sharedPermissions;
  for (const p of PERM_NAMES) {
    const why = perm[p] && !theyShare[p] ? 'does not allow' : theirs[p] && !shared[p] ? 'uses' : null;
    if (why !== null) {
      const msg = `Conflicts with use by a block device as 'root', which ${why} '${p}' on ${bs.filename}`;
      throw new BlockError('EPERM', msg, { op: 'attach', path: bs.filename });
    }
  }
}
