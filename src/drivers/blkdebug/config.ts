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
import { BlockError, ERRNO_NUMBERS, codeFromErrno, type BlockErrorCode } from '../../block/errors.js';
import { BLKDBG_EVENTS, type BlkDebugEvent } from '../../block/events.js';
import { linuxStrerror } from './strerror.js';

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
  /** Error to inject, as a BlockError code (EIO for numbers no code names). */
  code: BlockErrorCode;
  /**
   * The errno number, as QEMU's int holds it (the config's 64-bit value truncated): 0 disables
   * the rule; a negative one makes the request succeed without doing any I/O (QEMU returns
   * -errno, a positive value that callers take for success).
   */
  errno: number;
  /** strerror(errno), what a failed request reports ("Unknown error N" for unknown numbers). */
  errnoText: string;
  /** Remove the rule after it failed one request. */
  once: boolean;
  /** Fail without first yielding to the event loop. */
  immediately: boolean;
  /**
   * Byte offset that the failing request must cover; -1 = any request. QEMU compares it as an
   * unsigned 64-bit number, so other negative sectors never match: they become Infinity here.
   */
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

/**
 * A config error, worded as qemu-io prints it: QEMU's config parser and blkdebug's rule check
 * report through an Error object that carries no file/line location, so neither does ours
 * (`where` names the file, kept only as the error's path).
 */
function parseError(where: string, message: string): BlockError {
  return new BlockError('EINVAL', message, { op: 'open', path: where });
}

const U64_MAX = (1n << 64n) - 1n;

/**
 * QEMU_OPT_NUMBER: qemu_strtou64 with base 0 (decimal, 0x hex, 0 octal), leading blanks and a
 * sign allowed. Like strtoull, a minus sign negates modulo 2^64 ("-1" is 2^64-1); only a
 * magnitude past 64 bits is refused. The caller truncates to its field's C type.
 */
function parseNumber(where: string, key: string, value: string): bigint {
  const m = /^[ \t\n\r\f\v]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(value);
  if (!m) throw parseError(where, `Parameter '${key}' expects a number`);
  const t = m[2];
  const n = /^0[xX]/.test(t) ? BigInt(t) : t.length > 1 && t.startsWith('0') ? BigInt(`0o${t.slice(1)}`) : BigInt(t);
  if (n > U64_MAX) throw parseError(where, `Value '${value}' is too large for parameter '${key}'`);
  return BigInt.asUintN(64, m[1] === '-' ? -n : n);
}

/** A number option read into a C int (state, new_state, errno): QEMU keeps the low 32 bits. */
function parseInt32(where: string, key: string, value: string): number {
  return Number(BigInt.asIntN(32, parseNumber(where, key, value)));
}

/** QEMU_OPT_BOOL: on/off and the usual synonyms. */
function parseBool(where: string, key: string, value: string): boolean {
  switch (value) {
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
  // Only the exact names: QEMU 7.2 refuses the old dotted spellings (l2_alloc.write).
  return (BLKDBG_EVENTS as readonly string[]).includes(name) ? (name as BlkDebugEvent) : undefined;
}

function ruleFromGroup(group: string, opts: Map<string, string>, where: string): BlkdebugRule {
  const eventName = opts.get('event');
  if (eventName === undefined) throw parseError(where, 'Missing event name for rule');
  const event = parseEventName(eventName);
  // qapi_enum_parse's wording, the value quoted bare.
  if (event === undefined) throw parseError(where, `invalid parameter value: ${eventName}`);
  const stateText = opts.get('state');
  const state = stateText === undefined ? 0 : parseInt32(where, 'state', stateText);
  if (group === 'set-state') {
    const ns = opts.get('new_state');
    return { action: 'set-state', event, state, newState: ns === undefined ? 0 : parseInt32(where, 'new_state', ns) };
  }
  const errnoValue = opts.get('errno');
  const errno = errnoValue === undefined ? ERRNO_NUMBERS.EIO : parseInt32(where, 'errno', errnoValue);
  // Any number is injected as is; numbers no BlockErrorCode names keep EIO as their category
  // and carry their own strerror text.
  const code: BlockErrorCode = codeFromErrno(errno) ?? 'EIO';
  const sectorText = opts.get('sector');
  // -1 (the default, or any value that wraps to it) means any offset; other sectors are
  // multiplied by 512 wrapping as QEMU's int64 arithmetic does, then compared unsigned.
  const sector = sectorText === undefined ? U64_MAX : parseNumber(where, 'sector', sectorText);
  const byteOffset = sector === U64_MAX ? U64_MAX : BigInt.asUintN(64, sector * 512n);
  const offset =
    byteOffset === U64_MAX ? -1 : byteOffset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.POSITIVE_INFINITY : Number(byteOffset);
  const once = opts.get('once');
  const imm = opts.get('immediately');
  const iotypeText = opts.get('iotype');
  let iotypes: ReadonlySet<BlkdebugIOType> = new Set(DEFAULT_IOTYPES);
  if (iotypeText !== undefined) {
    if (!(BLKDEBUG_IO_TYPES as readonly string[]).includes(iotypeText)) {
      throw parseError(where, `invalid parameter value: ${iotypeText}`);
    }
    iotypes = new Set([iotypeText as BlkdebugIOType]);
  }
  return {
    action: 'inject-error',
    event,
    state,
    code,
    errno,
    errnoText: linuxStrerror(errno),
    once: once === undefined ? false : parseBool(where, 'once', once),
    immediately: imm === undefined ? false : parseBool(where, 'immediately', imm),
    offset,
    iotypes,
  };
}

/** QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
function idWellformed(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(id);
}

/** The option types, checked when a line sets them (qemu_opt_set), before any rule is built. */
const NUMBER_KEYS = new Set(['state', 'new_state', 'errno', 'sector']);
const BOOL_KEYS = new Set(['once', 'immediately']);

/**
 * Parse a config file's text, in QEMU's two phases: qemu_config_parse reads every line first
 * (groups, names and value types; the first bad line fails), then blkdebug builds the rules,
 * all [inject-error] groups before the [set-state] ones (its add order, which also decides
 * which bad rule is reported). Line handling follows QEMU's sscanf patterns: a line starting
 * with '#' is a comment (only in the first column), `[group]` or `[group "id"]` opens a group
 * (ids well-formed and unique per group), anything else is `name = "value"`, where
 * a value not in quotes reads as empty and a name is the first blank-free word.
 * `fileName` is only recorded as the errors' path.
 */
export function parseBlkdebugConfig(text: string, fileName = 'config'): BlkdebugRule[] {
  const where = fileName;
  const groups: Array<{ group: string; opts: Map<string, string> }> = [];
  const ids = new Map<string, Set<string>>();
  let current: { group: string; opts: Map<string, string> } | null = null;
  // fgets lines, newline kept: a "[group" without its bracket names the group with it.
  for (const line of text.split(/(?<=\n)/)) {
    if (/^[ \t\n\r]*$/.test(line)) continue;
    if (line.startsWith('#')) continue;
    // %63s takes the whole word (no backtracking into it), hence the lookahead.
    const withId = /^\[(\S{1,63})(?!\S)\s*"([^"]{1,63})/.exec(line);
    const plain = withId ? null : /^\[([^\]]{1,63})/.exec(line);
    if (withId || plain) {
      const name = (withId ?? plain)![1];
      if (!Object.hasOwn(GROUP_KEYS, name)) throw parseError(where, `There is no option group '${name}'`);
      if (withId) {
        const seen = ids.get(name) ?? new Set<string>();
        ids.set(name, seen);
        const id = withId[2];
        if (!idWellformed(id)) {
          throw parseError(
            where,
            "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
          );
        }
        if (seen.has(id)) throw parseError(where, `Duplicate ID '${id}' for ${name}`);
        seen.add(id);
      }
      current = { group: name, opts: new Map() };
      groups.push(current);
      continue;
    }
    const m = /^\s*(\S{1,63})\S*(.*)$/s.exec(line)!;
    const arg = m[1];
    const v = /^\s*=\s*"([^"]{1,1023})/.exec(m[2]);
    const value = v ? v[1] : '';
    if (current === null) throw parseError(where, 'no group defined');
    if (!GROUP_KEYS[current.group].includes(arg)) throw parseError(where, `Invalid parameter '${arg}'`);
    if (NUMBER_KEYS.has(arg)) parseNumber(where, arg, value);
    if (BOOL_KEYS.has(arg)) parseBool(where, arg, value);
    current.opts.set(arg, value);
  }
  const inject = groups.filter((g) => g.group === 'inject-error').map((g) => ruleFromGroup(g.group, g.opts, where));
  const setState = groups.filter((g) => g.group === 'set-state').map((g) => ruleFromGroup(g.group, g.opts, where));
  return [...inject, ...setState];
}
