// blk-io's option words: cache, discard and aio modes, booleans, and QemuOpts-style
// "key=value,..." strings (open -o, --image-opts).
import { cacheModeFlags } from '../shared/cache.js';
import type { ToolOutput } from '../shared/output.js';
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

/**
 * QemuOpts "key=value,key2=value2" (",," is a literal comma). A bare word is the deprecated
 * short form of a boolean ("foo" = foo=on, "nofoo" = foo=off), with QEMU's warning.
 */
export function parseKeyValues(o: ToolOutput, text: string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < text.length) {
    let key = '';
    while (i < text.length && text[i] !== '=' && text[i] !== ',') key += text[i++];
    if (text[i] !== '=') {
      i++;
      const off = key.startsWith('no');
      const name = off ? key.slice(2) : key;
      const value = off ? 'off' : 'on';
      o.warn(`short-form boolean option '${key}' deprecated`);
      o.errRaw(`Please use ${name}=${value} instead\n`);
      out.set(name, value);
      continue;
    }
    i++;
    let val = '';
    while (i < text.length) {
      if (text[i] === ',') {
        if (text[i + 1] === ',') {
          val += ',';
          i += 2;
          continue;
        }
        i++;
        break;
      }
      val += text[i++];
    }
    out.set(key, val);
  }
  return out;
}
