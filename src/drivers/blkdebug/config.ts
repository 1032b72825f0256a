/**
 * blkdebug's rule file: QEMU's ini-like config syntax (qemu_config_parse) with two groups,
 * [inject-error] and [set-state]. Pure: text in, rules out, a BlockError for anything malformed
 * (QEMU refuses the whole open when one rule is bad, so do we).
 *
 *   # comment
 *   [inject-error]
 *   event = "l2_update"
 *   errno = "5"
 *   once = "on"
 *
 *   [set-state]
 *   event = "l2_update"
 *   state = "1"
 *   new_state = "2"
 */
import { BlockError, codeFromErrno, type BlockErrorCode } from '../../block/errors.js';
import { BLKDBG_EVENTS, type BlkDebugEvent } from '../../block/events.js';

/** Which request types an injected error hits (QEMU's BlkdebugIOType). */
export const BLKDEBUG_IO_TYPES = ['read', 'write', 'write-zeroes', 'discard', 'flush', 'block-status'] as const;
export type BlkdebugIOType = (typeof BLKDEBUG_IO_TYPES)[number];

/** QEMU's default iotype mask: every type except block-status. */
export const DEFAULT_IOTYPES: readonly BlkdebugIOType[] = ['read', 'write', 'write-zeroes', 'discard', 'flush'];

export interface InjectErrorRule {
  action: 'inject-error';
  event: BlkDebugEvent;
  /** Only fires in this state; 0 = any state. */
  state: number;
  /** Error to inject, as a BlockError code (the config gives an errno number). */
  code: BlockErrorCode;
  /** The errno number as written (0 disables the rule, as in QEMU). */
  errno: number;
  /** Remove the rule after it failed one request. */
  once: boolean;
  /** Fail without first yielding to the event loop. */
  immediately: boolean;
  /** Byte offset that the failing request must cover; -1 = any request. */
  offset: number;
  iotypes: ReadonlySet<BlkdebugIOType>;
}

export interface SetStateRule {
  action: 'set-state';
  event: BlkDebugEvent;
  state: number;
  newState: number;
}

export interface SuspendRule {
  action: 'suspend';
  event: BlkDebugEvent;
  state: number;
  tag: string;
}

export type BlkdebugRule = InjectErrorRule | SetStateRule | SuspendRule;

const GROUP_KEYS: Record<string, readonly string[]> = {
  'inject-error': ['event', 'state', 'errno', 'sector', 'once', 'immediately', 'iotype'],
  'set-state': ['event', 'state', 'new_state'],
};

function parseError(where: string, message: string): BlockError {
  return new BlockError('EINVAL', `Could not parse blkdebug config file: ${where}${message}`, { op: 'open' });
}

/** QEMU_OPT_NUMBER: an unsigned decimal (or 0x hex) integer. */
function parseNumber(where: string, key: string, value: string): number {
  const v = value.trim();
  if (!/^(0[xX][0-9a-fA-F]+|[0-9]+)$/.test(v)) {
    throw parseError(where, `Parameter '${key}' expects a number`);
  }
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw parseError(where, `Parameter '${key}' is too large`);
  return n;
}

/** QEMU_OPT_BOOL: on/off and the usual synonyms. */
function parseBool(where: string, key: string, value: string): boolean {
  switch (value.trim()) {
    case 'on':
    case 'yes':
    case 'true':
    case 'y':
      return true;
    case 'off':
    case 'no':
    case 'false':
    case 'n':
      return false;
    default:
      throw parseError(where, `Parameter '${key}' expects 'on' or 'off'`);
  }
}

export function parseEventName(name: string): BlkDebugEvent | undefined {
  // QEMU before 2.x spelled some names with dots (l2_alloc.write); accept both.
  const n = name.replace(/\./g, '_');
  return (BLKDBG_EVENTS as readonly string[]).includes(n) ? (n as BlkDebugEvent) : undefined;
}

function ruleFromGroup(group: string, opts: Map<string, string>, where: string): BlkdebugRule {
  const eventName = opts.get('event');
  if (eventName === undefined) throw parseError(where, 'Missing event name for rule');
  const event = parseEventName(eventName);
  if (event === undefined) throw parseError(where, `Invalid event name '${eventName}'`);
  const stateText = opts.get('state');
  const state = stateText === undefined ? 0 : parseNumber(where, 'state', stateText);
  if (group === 'set-state') {
    const ns = opts.get('new_state');
    return { action: 'set-state', event, state, newState: ns === undefined ? 0 : parseNumber(where, 'new_state', ns) };
  }
  const errnoText = opts.get('errno');
  const errno = errnoText === undefined ? 5 : parseNumber(where, 'errno', errnoText);
  let code: BlockErrorCode = 'EIO';
  if (errno !== 0) {
    const c = codeFromErrno(errno);
    if (c === undefined) throw parseError(where, `Unsupported errno ${errno}`);
    code = c;
  }
  const sectorText = opts.get('sector');
  const sector = sectorText === undefined ? -1 : parseNumber(where, 'sector', sectorText);
  const offset = sector === -1 ? -1 : sector * 512;
  if (!Number.isSafeInteger(offset)) throw parseError(where, `Parameter 'sector' is too large`);
  const iotypeText = opts.get('iotype');
  let iotypes: ReadonlySet<BlkdebugIOType> = new Set(DEFAULT_IOTYPES);
  if (iotypeText !== undefined) {
    const t = iotypeText.trim();
    if (!(BLKDEBUG_IO_TYPES as readonly string[]).includes(t)) {
      throw parseError(where, `Invalid parameter value '${t}' for 'iotype'`);
    }
    iotypes = new Set([t as BlkdebugIOType]);
  }
  const onceText = opts.get('once');
  const immText = opts.get('immediately');
  return {
    action: 'inject-error',
    event,
    state,
    code,
    errno,
    once: onceText === undefined ? false : parseBool(where, 'once', onceText),
    immediately: immText === undefined ? false : parseBool(where, 'immediately', immText),
    offset,
    iotypes,
  };
}

/**
 * Parse a config file's text. Rules come back in file order; QEMU adds all [inject-error]
 * rules before the [set-state] ones, which only matters for their order within one event.
 */
export function parseBlkdebugConfig(text: string, fileName = 'config'): BlkdebugRule[] {
  const inject: BlkdebugRule[] = [];
  const setState: BlkdebugRule[] = [];
  let group: string | null = null;
  let groupLine = 0;
  let opts = new Map<string, string>();

  const finish = (): void => {
    if (group === null) return;
    const rule = ruleFromGroup(group, opts, `${fileName}:${groupLine}: `);
    (rule.action === 'set-state' ? setState : inject).push(rule);
  };

  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const where = `${fileName}:${i + 1}: `;
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#')) continue;
    const g = /^\[([A-Za-z0-9_-]+)(?:\s+"[^"]*")?\]$/.exec(line);
    if (g) {
      finish();
      if (!(g[1] in GROUP_KEYS)) throw parseError(where, `There is no option group '${g[1]}'`);
      group = g[1];
      groupLine = i + 1;
      opts = new Map();
      continue;
    }
    const kv = /^([A-Za-z0-9_.-]+)\s*=\s*"([^"]*)"$/.exec(line);
    if (!kv) throw parseError(where, 'parse error');
    if (group === null) throw parseError(where, 'no group defined');
    if (!GROUP_KEYS[group].includes(kv[1])) throw parseError(where, `Invalid parameter '${kv[1]}'`);
    opts.set(kv[1], kv[2]);
  }
  finish();
  return [...inject, ...setState];
}
