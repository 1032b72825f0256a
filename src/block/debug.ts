/**
 * Debugging a request path from outside (QEMU's bdrv_debug_breakpoint family): a driver with
 * breakpoint hooks (blkdebug) parks a request that announces an event until it is resumed.
 * The calls look for that driver from the node down its `file` children, as QEMU walks the
 * primary child, and fail with ENOTSUP when the stack has none.
 *
 * Also the one place where the block layer prints (QEMU's blkdebug prints "Suspended request"
 * on stdout): a process-wide message sink, silent until a tool sets it.
 */
import type { BlockDriver } from './driver.js';
import { BlockError } from './errors.js';
import type { BlockDriverState } from './node.js';

type BreakpointHook = 'debugBreakpoint' | 'debugRemoveBreakpoint' | 'debugResume' | 'debugIsSuspended';

/** The first node at or below `bs` whose driver has `hook`. */
function debugNode(bs: BlockDriverState, hook: BreakpointHook, op: string): { node: BlockDriverState; drv: Required<Pick<BlockDriver, BreakpointHook>> } {
  for (let n: BlockDriverState | null = bs; n; n = n.file) {
    const drv = n.driver;
    if (drv[hook] !== undefined) return { node: n, drv: drv as Required<Pick<BlockDriver, BreakpointHook>> };
  }
  throw new BlockError('ENOTSUP', `${op}: no node of this image's stack has breakpoints`, { op });
}

/** bdrv_debug_breakpoint: the next request announcing `event` parks, tagged `tag`. */
export function bdrvDebugBreakpoint(bs: BlockDriverState, event: string, tag: string): void {
  const { node, drv } = debugNode(bs, 'debugBreakpoint', 'break');
  drv.debugBreakpoint(node, event, tag);
}

/** bdrv_debug_remove_breakpoint: forget `tag`'s breakpoints and wake its parked requests. */
export function bdrvDebugRemoveBreakpoint(bs: BlockDriverState, tag: string): void {
  const { node, drv } = debugNode(bs, 'debugRemoveBreakpoint', 'remove_break');
  drv.debugRemoveBreakpoint(node, tag);
}

/** bdrv_debug_resume: wake the request parked at `tag`. */
export function bdrvDebugResume(bs: BlockDriverState, tag: string): void {
  const { node, drv } = debugNode(bs, 'debugResume', 'resume');
  drv.debugResume(node, tag);
}

/** bdrv_debug_is_suspended: is a request parked at `tag`? */
export function bdrvDebugIsSuspended(bs: BlockDriverState, tag: string): boolean {
  const { node, drv } = debugNode(bs, 'debugIsSuspended', 'wait_break');
  return drv.debugIsSuspended(node, tag);
}

let messageSink: ((line: string) => void) | null = null;

/** Where drivers' debug messages go (blk-io prints them on stdout, as qemu-io); null: nowhere. */
export function setDebugMessageSink(sink: ((line: string) => void) | null): void {
  messageSink = sink;
}

/** A driver's debug message, one line without its newline. */
export function debugMessage(line: string): void {
  messageSink?.(line);
}
