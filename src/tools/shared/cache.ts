// Cache modes (bdrv_parse_cache_mode), as both tools take them in -t / -T / -c.

/** What a cache mode sets: O_DIRECT, flushes ignored, writes with FUA (the write cache off). */
export interface CacheFlags {
  nocache: boolean;
  noFlush: boolean;
  writethrough: boolean;
}

const CACHE_MODES: Readonly<Record<string, CacheFlags>> = {
  none: { nocache: true, noFlush: false, writethrough: false },
  off: { nocache: true, noFlush: false, writethrough: false },
  directsync: { nocache: true, noFlush: false, writethrough: true },
  writeback: { nocache: false, noFlush: false, writethrough: false },
  unsafe: { nocache: false, noFlush: true, writethrough: false },
  writethrough: { nocache: false, noFlush: false, writethrough: true },
};

/** The flags of a cache mode, or null for a word that is none. */
export function cacheModeFlags(mode: string): CacheFlags | null {
  return Object.hasOwn(CACHE_MODES, mode) ? CACHE_MODES[mode] : null;
}
