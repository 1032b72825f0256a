import { EventEmitter } from 'eventemitter3';

/**
 * QEMU's blkdebug event names (BLKDBG_EVENT). Drivers announce them on their protocol child
 * (`await bs.file.debugEvent('l2_update')`); the blkdebug filter turns them into injected errors
 * and breakpoints.
 */
export const BLKDBG_EVENTS = [
  'l1_update',
  'l1_grow_alloc_table',
  'l1_grow_write_table',
  'l1_grow_activate_table',
  'l2_load',
  'l2_update',
  'l2_update_compressed',
  'l2_alloc_cow_read',
  'l2_alloc_write',
  'read_aio',
  'read_backing_aio',
  'read_compressed',
  'write_aio',
  'write_compressed',
  'vmstate_load',
  'vmstate_save',
  'cow_read',
  'cow_write',
  'reftable_load',
  'reftable_grow',
  'reftable_update',
  'refblock_load',
  'refblock_update',
  'refblock_update_part',
  'refblock_alloc',
  'refblock_alloc_hookup',
  'refblock_alloc_write',
  'refblock_alloc_write_blocks',
  'refblock_alloc_write_table',
  'refblock_alloc_switch_table',
  'cluster_alloc',
  'cluster_alloc_bytes',
  'cluster_free',
  'flush_to_os',
  'flush_to_disk',
  'pwritev_rmw_head',
  'pwritev_rmw_after_head',
  'pwritev_rmw_tail',
  'pwritev_rmw_after_tail',
  'pwritev',
  'pwritev_zero',
  'pwritev_done',
  'empty_image_prepare',
  'l1_shrink_write_table',
  'l1_shrink_free_l2_clusters',
  'cor_write',
  'cluster_alloc_space',
] as const;

export type BlkDebugEvent = (typeof BLKDBG_EVENTS)[number];

/** One trace point: QEMU's trace_* name camelCased (`qedAioSetup`) and its arguments. */
export interface TraceEvent {
  name: string;
  args: Record<string, unknown>;
}

export interface BlockEvents {
  /** Trace points, for learners and debugging (`blk-img -T 'qed*'`). */
  trace: (event: TraceEvent) => void;
  /** blkdebug events announced on this node. */
  debug: (event: BlkDebugEvent) => void;
  /** The node was closed. */
  close: () => void;
}

type Name = EventEmitter.EventNames<BlockEvents>;
type Listener<T extends Name> = EventEmitter.EventListener<BlockEvents, T>;

export class BlockEventEmitter extends EventEmitter<BlockEvents> {
  /**
   * Has the 'debug' event a listener? listenerCount('debug') > 0 kept in a field as listeners
   * come and go: the write path asks it of every node for every request, where a call costs
   * more than the check (V8's baseline tier, a fresh process's first thousands of requests).
   */
  debugListened = false;
  /** Has the 'trace' event a listener? Kept as debugListened, for the same reason (QED). */
  traceListened = false;

  override on<T extends Name>(event: T, fn: Listener<T>, context?: unknown): this {
    super.on(event, fn, context);
    return this.listened();
  }

  override addListener<T extends Name>(event: T, fn: Listener<T>, context?: unknown): this {
    super.addListener(event, fn, context);
    return this.listened();
  }

  override once<T extends Name>(event: T, fn: Listener<T>, context?: unknown): this {
    super.once(event, fn, context);
    return this.listened();
  }

  /** Also how emit() drops a once() listener after its call. */
  override removeListener<T extends Name>(event: T, fn?: Listener<T>, context?: unknown, once?: boolean): this {
    super.removeListener(event, fn, context, once);
    return this.listened();
  }

  override off<T extends Name>(event: T, fn?: Listener<T>, context?: unknown, once?: boolean): this {
    super.off(event, fn, context, once);
    return this.listened();
  }

  override removeAllListeners(event?: Name): this {
    super.removeAllListeners(event);
    return this.listened();
  }

  private listened(): this {
    this.debugListened = this.listenerCount('debug') > 0;
    this.traceListened = this.listenerCount('trace') > 0;
    return this;
  }
}
