/**
 * Drain, reopen and close of a node (QEMU's bdrv_drained_begin/end, bdrv_reopen, bdrv_close).
 *
 * Order: drain waits for the node's requests, then lets the driver finish background work,
 * then drains the children. Reopen drains and flushes under the old mode before any node
 * changes, then switches the file chain bottom-up. Close refuses new requests first (the
 * node's `closing` is set by its caller), waits for those in flight, flushes, runs the
 * driver's close, then closes the children.
 */
import type { OpenOptions } from './driver.js';
import { BlockError, toBlockError } from './errors.js';
import { bdrvFlush } from './io/flush.js';
import { checkOpen } from './io/requests.js';
import type { BlockDriverState } from './node.js';

/** What `reopen` may change; an absent field keeps the node's current mode. */
export interface ReopenOptions {
  readOnly?: boolean;
  /** cache.no-flush (cache=unsafe): flushes are ignored. */
  noFlush?: boolean;
}

/**
 * Drain (QEMU's bdrv_drained_begin + end): wait for the node's requests in flight, let its
 * driver finish background work now (drainBegin: QED's pending need-check job runs at once),
 * then drain its children the same way. Nothing holds new requests back meanwhile: callers
 * that need a quiet node issue none until it resolves. A closed node has nothing to drain.
 */
export async function bdrvDrain(bs: BlockDriverState): Promise<void> {
  if (!bs.isOpen) return;
  await bs.requests.idle();
  await bs.driver.drainBegin?.(bs);
  for (const child of [bs.file, bs.dataFile, bs.backing]) if (child) await child.drain();
}

type Mode = { readOnly: boolean; noFlush: boolean };

/**
 * Reopen in place with new flags (QEMU's bdrv_reopen): drain, flush under the old mode, then
 * switch the node and its file chain (filters, protocol) to the new read-only /
 * cache.no-flush mode. Every node stays open with its state (blkdebug rules, caches, QED's
 * tables); the backing chain stays read-only. On failure nothing has changed; a failed
 * flush is thrown with op 'reopen_flush' (qemu-io words it "Error flushing drive").
 */
export async function bdrvReopen(bs: BlockDriverState, options: ReopenOptions): Promise<void> {
  checkOpen(bs, 'reopen');
  await bs.drain();
  try {
    if (!bs.readOnly) await bs.flush();
  } catch (e) {
    const err = toBlockError(e, { op: 'flush', path: bs.filename });
    throw new BlockError(err.code, err.message, { op: 'reopen_flush', path: bs.filename, cause: err });
  }
  const next: Mode = { readOnly: options.readOnly ?? bs.readOnly, noFlush: options.noFlush ?? bs.openOptions.noFlush ?? false };
  const nodes: BlockDriverState[] = [bs];
  for (let n = bs.file; n; n = n.file) nodes.push(n);
  // An external data file is written like the file: it follows the node's mode.
  for (let n = bs.dataFile; n; n = n.file) nodes.push(n);
  // Bottom-up: the protocol, the one that may refuse (storage that cannot be opened for
  // writing), goes first, before any node above it changed.
  nodes.reverse();
  const done: { node: BlockDriverState; old: Mode }[] = [];
  try {
    for (const n of nodes) {
      const old = { readOnly: n.readOnly, noFlush: n.openOptions.noFlush ?? false };
      await reopenNode(n, next);
      done.push({ node: n, old });
    }
  } catch (e) {
    for (const { node, old } of done.reverse()) await reopenNode(node, old).catch(() => undefined);
    throw toBlockError(e, { op: 'reopen', path: bs.filename });
  }
}

async function reopenNode(bs: BlockDriverState, next: Mode): Promise<void> {
  const options: OpenOptions = { ...bs.openOptions, ...next };
  if (bs.driver.reopen) {
    await bs.driver.reopen(bs, options);
  } else if (next.readOnly !== bs.readOnly && bs.driver.isProtocol && bs.driver.open) {
    // A protocol's state is its handle on the storage: open that again in the new mode.
    await bs.driver.close?.(bs);
    try {
      await bs.driver.open(bs, options);
    } catch (e) {
      // Get the old handle back; if even that fails, the node cannot serve requests anyway.
      await bs.driver.open(bs, bs.openOptions).catch(() => undefined);
      throw e;
    }
  }
  bs.readOnly = next.readOnly;
  // The same object the driver got at open (QED keeps it for invalidateCache).
  bs.openOptions.readOnly = next.readOnly;
  bs.openOptions.noFlush = next.noFlush;
}

/** The close of an open node, after new requests are refused. */
export async function bdrvClose(bs: BlockDriverState): Promise<void> {
  await bs.requests.idle();
  let firstError: unknown = null;
  try {
    // Cached metadata reaches the disk before the driver lets go of it.
    if (!bs.readOnly) await bdrvFlush(bs);
  } catch (e) {
    firstError = e;
  }
  try {
    await bs.driver.close?.(bs);
  } catch (e) {
    firstError ??= e;
  }
  try {
    await closeChildren(bs);
  } catch (e) {
    firstError ??= e;
  }
  bs.events.emit('close');
  if (firstError !== null) throw toBlockError(firstError, { op: 'close', path: bs.filename });
}

/** Close the backing chain, the data file and the file child (after the parent let go of them). */
export async function closeChildren(bs: BlockDriverState): Promise<void> {
  let firstError: unknown = null;
  for (const child of [bs.backing, bs.dataFile, bs.file]) {
    if (!child) continue;
    try {
      await child.close();
    } catch (e) {
      firstError ??= e;
    }
  }
  if (firstError !== null) throw toBlockError(firstError, { op: 'close', path: bs.filename });
}
