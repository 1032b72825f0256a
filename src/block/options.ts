/**
 * QEMU's option model for opening images: QemuOpts strings (`-o`, `--image-opts`), `json:`
 * filenames, protocol prefixes, and each driver's list of runtime options, with QEMU's
 * messages. Pure functions over the flat QDict of qdict.ts; the open path (open-options.ts)
 * applies them node by node in bdrv_open_inherit's order.
 */
import type { BlockDriver } from './driver.js';
import type { BlockDriverRegistry } from './registry.js';
import { BlockError } from './errors.js';
import { protocolPrefix } from './path.js';
import { parseOptionSize } from './strtosz.js';
import { qdictFirstKey, qdictFlatten, qdictOrder, qvalueToOptString, type FlatQDict } from './qdict.js';
import { formatDouble17g, parseQemuJson } from './qjson.js';

// ---------------------------------------------------------------------------------------------
// QemuOpts strings
// ---------------------------------------------------------------------------------------------

/** A QemuOptsList's parsing rules (only what changes how a string is read). */
export interface OptsListRules {
  /** The name a leading value without '=' is given (`file` for qemu-img --image-opts). */
  impliedName?: string;
  /** merge_lists: the list has a single set of options, and `id=` is refused. */
  mergeLists?: boolean;
}

/** qemu-io's `open -o` options (empty_opts: any key, merged, no id). */
export const QEMU_IO_OPEN_OPTS: OptsListRules = { mergeLists: true };
/** qemu-io's --image-opts (file_opts; its implied name is not used: no abbreviation). */
export const QEMU_IO_IMAGE_OPTS: OptsListRules = {};
/** qemu-img's --image-opts (qemu_source_opts, parsed with the implied name `file`). */
export const QEMU_IMG_IMAGE_OPTS: OptsListRules = { impliedName: 'file' };

/** A deprecation warning QEMU prints while parsing: warn_report, then a hint line. */
export interface OptsWarning {
  warning: string;
  hint: string;
}

export interface ParsedOpts {
  /** The options in order, `id` left out (it is `id`), later repeats kept. */
  opts: Array<[string, string]>;
  id?: string;
  warnings: OptsWarning[];
}

/** get_opt_value: up to the next single ',' (a doubled ',,' is a literal comma). */
function getOptValue(s: string, start: number): { value: string; end: number } {
  let value = '';
  let i = start;
  while (i < s.length) {
    if (s[i] === ',') {
      if (s[i + 1] !== ',') break;
      i++;
    }
    value += s[i++];
  }
  return { value, end: i };
}

/** is_help_option. */
function isHelpOption(name: string): boolean {
  return name === '?' || name === 'help';
}

/** get_opt_name_value: one `name=value`, a bare flag, or the implied first value. */
function getOptNameValue(
  s: string,
  start: number,
  firstName: string | undefined,
  warnings: OptsWarning[] | null,
): { name: string; value: string; next: number } {
  const rest = s.slice(start);
  const m = /[=,]/.exec(rest);
  const len = m === null ? rest.length : m.index;
  let name: string;
  let value: string;
  let end: number;
  if (rest[len] !== '=') {
    if (firstName !== undefined) {
      name = firstName;
      ({ value, end } = getOptValue(s, start));
    } else {
      // A bare word is a boolean flag: "foo" is foo=on, "nofoo" is foo=off (deprecated).
      const word = rest.slice(0, len);
      end = start + len;
      const off = word.startsWith('no');
      name = off ? word.slice(2) : word;
      value = off ? 'off' : 'on';
      if (warnings !== null && (off || !isHelpOption(name))) {
        warnings.push({
          warning: `short-form boolean option '${word}' deprecated`,
          hint: name === 'delay' ? `Please use nodelay=${off ? 'on' : 'off'} instead` : `Please use ${name}=${value} instead`,
        });
      }
    }
  } else {
    name = rest.slice(0, len);
    ({ value, end } = getOptValue(s, start + len + 1));
  }
  return { name, value, next: end < s.length ? end + 1 : end };
}

/** id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
export function idWellformed(id: string): boolean {
  return /^[A-Za-z][A-Za-z0-9\-._]*$/.test(id);
}

/** The message (and hint line) QEMU gives for a malformed id. */
export function badIdError(): BlockError {
  return new BlockError(
    'EINVAL',
    "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
    { op: 'options' },
  );
}

/**
 * qemu_opts_parse_noisily over a list that accepts any key: `a=1,b=x,,y,flag,nofoo`.
 * Throws QEMU's error (an `id` the list refuses or a malformed one); deprecation warnings are
 * returned for the caller to print.
 */
export function parseOptsString(text: string, rules: OptsListRules = {}): ParsedOpts {
  // opts_parse_id: the id is looked up first, without warnings.
  let id: string | undefined;
  for (let p = 0; p < text.length; ) {
    const r = getOptNameValue(text, p, undefined, null);
    if (r.name === 'id') {
      id = r.value;
      break;
    }
    p = r.next;
  }
  if (id !== undefined) {
    if (rules.mergeLists === true) throw new BlockError('EINVAL', "Invalid parameter 'id'", { op: 'options' });
    if (!idWellformed(id)) throw badIdError();
  }
  const warnings: OptsWarning[] = [];
  const opts: Array<[string, string]> = [];
  let first = rules.impliedName;
  for (let p = 0; p < text.length; ) {
    const r = getOptNameValue(text, p, first, warnings);
    first = undefined;
    p = r.next;
    if (r.name !== 'id') opts.push([r.name, r.value]);
  }
  return id === undefined ? { opts, warnings } : { opts, id, warnings };
}

/** qemu_opts_to_qdict: `id` first, then each option (a repeated key keeps its first place). */
export function optsToQDict(parsed: ParsedOpts): FlatQDict {
  const d: FlatQDict = new Map();
  if (parsed.id !== undefined) d.set('id', parsed.id);
  for (const [k, v] of parsed.opts) d.set(k, v);
  return d;
}

// ---------------------------------------------------------------------------------------------
// json: filenames and protocol prefixes
// ---------------------------------------------------------------------------------------------

export const JSON_PREFIX = 'json:';

/**
 * parse_json_filename: the object after `json:`, flattened. Messages as QEMU's: "Could not
 * parse the JSON options: ..." and "Invalid JSON object given".
 */
export function parseJsonFilename(filename: string): FlatQDict {
  let v;
  try {
    v = parseQemuJson(filename.slice(JSON_PREFIX.length));
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw new BlockError('EINVAL', `Could not parse the JSON options: ${msg}`, { op: 'open', cause: e });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v) || typeof v === 'bigint') {
    throw new BlockError('EINVAL', 'Invalid JSON object given', { op: 'open' });
  }
  return qdictFlatten(v);
}

/**
 * bdrv_parse_filename_strip_prefix: `file:a:b.qed` is the file `a:b.qed`, which would read as
 * protocol `a` on its own, so it becomes `./a:b.qed` (a name with a colon before any slash is
 * never absolute). A name without the prefix is returned as it is.
 */
export function stripProtocolPrefix(filename: string, prefix: string): string {
  if (!filename.startsWith(prefix)) return filename;
  const rest = filename.slice(prefix.length);
  return protocolPrefix(rest) !== null ? `./${rest}` : rest;
}

/**
 * A filename as its protocol driver reads it (bdrv_parse_filename): `file:a:b.qed` is
 * `./a:b.qed`. Names of other drivers are kept as they are.
 */
export function canonicalProtocolFilename(registry: BlockDriverRegistry, filename: string, drv = registry.findProtocol(filename)): string {
  if (!drv.parseFilename) return filename;
  const opts: FlatQDict = new Map();
  drv.parseFilename(filename, opts);
  const f = opts.get('filename');
  return typeof f === 'string' ? f : filename;
}

// ---------------------------------------------------------------------------------------------
// Runtime options: the generic ones and each driver's own
// ---------------------------------------------------------------------------------------------

/** One runtime option a driver takes at open (QemuOptDesc). */
export interface RuntimeOptionSpec {
  name: string;
  /** QEMU_OPT_STRING, _BOOL, _NUMBER (qemu_strtou64) or _SIZE (qemu_strtosz). */
  type: 'string' | 'bool' | 'number' | 'size';
  help?: string;
  /**
   * Not part of what the node is (QEMU lists the others in strong_runtime_opts): left out of
   * the `json:` name of a node shown by its options.
   */
  weak?: boolean;
}

/** What the generic layer takes from every node's options (bdrv_runtime_opts). */
export const BDRV_RUNTIME_OPTS: readonly RuntimeOptionSpec[] = [
  { name: 'node-name', type: 'string', help: 'Node name of the block device node' },
  { name: 'driver', type: 'string', help: 'Block driver to use for the node' },
  { name: 'cache.direct', type: 'bool', help: 'Bypass software writeback cache on the host' },
  { name: 'cache.no-flush', type: 'bool', help: 'Ignore flush requests' },
  { name: 'read-only', type: 'bool', help: 'Node is opened in read-only mode' },
  { name: 'auto-read-only', type: 'bool', help: 'Node can become read-only if opening read-write fails' },
  { name: 'detect-zeroes', type: 'string', help: 'try to optimize zero writes (off, on, unmap)' },
  { name: 'discard', type: 'string', help: 'discard operation (ignore/off, unmap/on)' },
  { name: 'force-share', type: 'bool', help: 'always accept other writers (default: off)' },
];

/** qapi_bool_parse: the words QEMU takes for on and off. */
export function parseOptBool(name: string, value: string): boolean {
  if (['on', 'yes', 'true', 'y'].includes(value)) return true;
  if (['off', 'no', 'false', 'n'].includes(value)) return false;
  throw new BlockError('EINVAL', `Parameter '${name}' expects 'on' or 'off'`, { op: 'open' });
}

/** A value as its option's type wants it; QEMU's message when it is not one. */
function checkOptValue(spec: RuntimeOptionSpec, value: string): string {
  if (spec.type === 'bool') parseOptBool(spec.name, value);
  else if (spec.type === 'size') parseOptionSize(spec.name, value);
  // qemu_strtou64 takes a sign: "-1" is 2^64-1, left for the driver's range check.
  else if (spec.type === 'number' && !/^\s*[+-]?(0x[0-9a-fA-F]+|[0-9]+)$/.test(value)) {
    throw new BlockError('EINVAL', `Parameter '${spec.name}' expects a number`, { op: 'open' });
  }
  return value;
}

/**
 * qemu_opts_absorb_qdict: move the keys `specs` names out of `options`, as strings (numbers in
 * decimal, booleans on/off), each checked against its type. Non-scalar values stay behind (and
 * are then refused as unknown).
 */
export function absorbOptions(options: FlatQDict, specs: readonly RuntimeOptionSpec[]): Map<string, string> {
  const out = new Map<string, string>();
  // In QEMU's hash order: with two bad values, the one QEMU meets first is reported.
  for (const key of qdictOrder([...options.keys()])) {
    const spec = specs.find((s) => s.name === key);
    const v = options.get(key);
    if (spec === undefined || v === undefined) continue;
    const str = qvalueToOptString(v, formatDouble17g);
    if (str === null) continue;
    out.set(key, checkOptValue(spec, str));
    options.delete(key);
  }
  return out;
}

/** The generic options of one node, taken out of its QDict. */
export interface CommonNodeOptions {
  readOnly?: boolean;
  noFlush?: boolean;
  cacheDirect?: boolean;
  forceShare?: boolean;
  autoReadOnly?: boolean;
  discard?: string;
  detectZeroes?: string;
  nodeName?: string;
}

/** bdrv_open_common's part: absorb and check bdrv_runtime_opts (driver stays for the caller). */
export function takeCommonOptions(options: FlatQDict): CommonNodeOptions {
  const specs = BDRV_RUNTIME_OPTS.filter((s) => s.name !== 'driver');
  const got = absorbOptions(options, specs);
  const out: CommonNodeOptions = {};
  const bool = (k: string): boolean | undefined => {
    const v = got.get(k);
    return v === undefined ? undefined : parseOptBool(k, v);
  };
  const set = <K extends keyof CommonNodeOptions>(k: K, v: CommonNodeOptions[K] | undefined): void => {
    if (v !== undefined) out[k] = v;
  };
  set('readOnly', bool('read-only'));
  set('noFlush', bool('cache.no-flush'));
  set('cacheDirect', bool('cache.direct'));
  set('forceShare', bool('force-share'));
  set('autoReadOnly', bool('auto-read-only'));
  const discard = got.get('discard');
  if (discard !== undefined && !['off', 'ignore', 'on', 'unmap'].includes(discard)) {
    throw new BlockError('EINVAL', 'Invalid discard option', { op: 'open' });
  }
  set('discard', discard);
  const dz = got.get('detect-zeroes');
  if (dz !== undefined && !['off', 'on', 'unmap'].includes(dz)) {
    throw new BlockError('EINVAL', `invalid parameter value: ${dz}`, { op: 'open' });
  }
  set('detectZeroes', dz);
  const nodeName = got.get('node-name');
  if (nodeName !== undefined && !idWellformed(nodeName)) {
    throw new BlockError('EINVAL', 'Invalid node-name: \'' + nodeName + "'", { op: 'open' });
  }
  set('nodeName', nodeName);
  return out;
}

/** A driver's own runtime options, absorbed into the string map its open hook reads. */
export function takeDriverOptions(options: FlatQDict, drv: BlockDriver): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of absorbOptions(options, drv.runtimeOptions ?? [])) out[k] = v;
  return out;
}

/**
 * The check at the end of bdrv_open_inherit: anything left over is an option this node does
 * not take. QEMU names the first key in its hash order, and words it by the kind of node.
 */
export function checkNoLeftovers(options: FlatQDict, drv: BlockDriver): void {
  const key = qdictFirstKey(options);
  if (key === undefined) return;
  const protocol = drv.isProtocol === true || drv.isFilter === true;
  throw new BlockError(
    'EINVAL',
    protocol
      ? `Block protocol '${drv.formatName}' doesn't support the option '${key}'`
      : `Block format '${drv.formatName}' does not support the option '${key}'`,
    { op: 'open' },
  );
}

/** A child given by reference (`file=node0`): there are no named nodes to find. */
export function referenceError(reference: string): BlockError {
  return new BlockError('ENOENT', `Cannot find device='${reference}' nor node-name='${reference}'`, { op: 'open' });
}
