// blk-io's option words: cache, discard and aio modes, booleans, and QemuOpts-style
// "key=value,..." strings (open -o, --image-opts).
import { cacheModeFlags } from '../shared/cache.js';
import type { OpenFlags } from './session.js';

/** bdrv_parse_cache_mode into the open flags; false for a word that is no cache mode. */
export function parseCacheMode(mode: string, f: OpenFlags): boolean {
  const flags = cacheModeFlags(mode);
  if (flags === null) return false;
  Object.assign(f, flags);
  return true;
}

/** QEMU's boolean option words (qapi_bool_parse); null for anything else. */
export function parseBool(v: string): boolean | null {
  if (['on', 'yes', 'true', 'y'].includes(v)) return true;
  if (['off', 'no', 'false', 'n'].includes(v)) return false;
  return null;
}

export function validDiscardMode(mode: string): boolean {
  return ['off', 'ignore', 'on', 'unmap'].includes(mode);
}

/** bdrv_parse_aio; returns whether it is the native (O_DIRECT-only) mode, or null if invalid. */
export function parseAioMode(mode: string): boolean | null {
  if (mode === 'threads' || mode === 'io_uring') return false;
  if (mode === 'native') return true;
  return null;
}

