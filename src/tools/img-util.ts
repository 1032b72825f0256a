// Pieces shared by the blk-img subcommands: opening images with qemu-img's messages, QAPI-style
// JSON output (QDict key order), the progress meter, and -o option lists.
import {
  BlockDriverState,
  ObjectTable,
  defaultRegistry,
  isBlockError,
  type BlockDriver,
  type BlockDriverRegistry,
  type CreateOptionSpec,
  type OpenOptions,
} from '../index.js';
import { resolve } from 'node:path';
import { ToolExit, ToolOutput, errorMessage, formatFixed, parseOptionSize, qemuStrtosz, type LongOption } from './common.js';
import { openImageOpts, processObjectArg } from './image-opts.js';
import { qdictOrder as qdictKeyOrder } from '../block/qdict.js';
import { quoteJsonString } from '../block/qjson.js';

export interface ImgEnv {
  o: ToolOutput;
  registry: BlockDriverRegistry;
  /** The --object definitions of this run. */
  objects: ObjectTable;
}

export function makeEnv(o: ToolOutput, registry: BlockDriverRegistry = defaultRegistry): ImgEnv {
  return { o, registry, objects: new ObjectTable() };
}

/**
 * --object: define the object now, as qemu-img does while parsing: help exits 0, an error
 * exits `failStatus` (compare's is 2).
 */
export function imgObject(env: ImgEnv, arg: string, failStatus = 1): void {
  const status = processObjectArg(env.o, env.objects, arg);
  if (status !== null) throw new ToolExit(status === 0 ? 0 : failStatus);
}

/** What the options most subcommands share set: --image-opts. */
export interface SharedImgOptions {
  imageOpts: boolean;
}

/**
 * The options most subcommands share, for their getopt loop's default case: --object
 * (created at once) and --image-opts; anything else is an option we accept but cannot honour.
 */
export function imgSharedOption(env: ImgEnv, opt: string, arg: string, shared: SharedImgOptions, failStatus = 1): void {
  if (opt === OPT_OBJECT) imgObject(env, arg, failStatus);
  else if (opt === OPT_IMAGE_OPTS) shared.imageOpts = true;
  else unsupportedOption(env, `--${opt}`);
}

/** Thrown by a subcommand's -h: the dispatcher prints the help text and exits 0. */
export class HelpRequest extends Error {
  override readonly name = 'HelpRequest';
}

/** A subcommand: argv[0] is its name (as qemu-img hands it), returns the exit status. */
export type ImgCommand = (env: ImgEnv, argv: string[]) => Promise<number>;

// Option values shared by several subcommands (qemu-img's OPTION_* constants).
export const OPT_OUTPUT = 'output';
export const OPT_OBJECT = 'object';
export const OPT_IMAGE_OPTS = 'image-opts';
export const LONG_HELP: LongOption = { name: 'help', hasArg: 0, val: 'h' };
export const LONG_OBJECT: LongOption = { name: 'object', hasArg: 1, val: OPT_OBJECT };
export const LONG_IMAGE_OPTS: LongOption = { name: 'image-opts', hasArg: 0, val: OPT_IMAGE_OPTS };
export const LONG_FORCE_SHARE: LongOption = { name: 'force-share', hasArg: 0, val: 'U' };
export const LONG_OUTPUT: LongOption = { name: 'output', hasArg: 1, val: OPT_OUTPUT };
export const LONG_FORMAT: LongOption = { name: 'format', hasArg: 1, val: 'f' };
export const LONG_TARGET_IMAGE_OPTS: LongOption = { name: 'target-image-opts', hasArg: 0, val: 'target-image-opts' };

/** --output=human|json. */
export function parseOutputFormat(env: ImgEnv, arg: string): 'human' | 'json' {
  if (arg === 'json') return 'json';
  if (arg === 'human') return 'human';
  env.o.error('--output must be used with human or json as argument.');
  throw new ToolExit(1);
}

/** Options we accept for compatibility but cannot honour (convert --salvage...). */
function unsupportedOption(env: ImgEnv, what: string): never {
  env.o.error(`${what} is not supported by this implementation`);
  throw new ToolExit(1);
}

export interface ImgOpenOptions {
  format?: string;
  readOnly?: boolean;
  noBacking?: boolean;
  check?: boolean;
  forceShare?: boolean;
  backingFormat?: string;
  /** cache=unsafe: flushes never reach the host file (the format still writes its metadata). */
  noFlush?: boolean;
  /** --image-opts: the name is an option string (img_open_opts). */
  imageOpts?: boolean;
}

/** img_open: open or print "Could not open 'NAME': reason" and exit 1 (or `failStatus`). */
export async function imgOpen(env: ImgEnv, filename: string, opts: ImgOpenOptions, failStatus = 1): Promise<BlockDriverState> {
  if (opts.imageOpts === true) return imgOpenOpts(env, filename, opts, failStatus);
  try {
    const bs = await openImage(env, filename, opts);
    // Probed: no format given, by -f or by the options (a json: name's driver).
    if (!bs.readOnly && bs.openOptions.format === undefined && bs.driver.formatName === 'raw') {
      // Writes to block 0 of a probed raw image are restricted (the raw driver guards them).
      env.o.errRaw(
        `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
          '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
          "         Specify the 'raw' format explicitly to remove the restrictions.\n",
      );
    }
    return bs;
  } catch (e) {
    env.o.error(`Could not open '${filename}': ${openErrorMessage(e, filename)}`);
    throw new ToolExit(failStatus);
  }
}

/** img_open_opts for the subcommands: the flags they ask for, with qemu-img's messages. */
async function imgOpenOpts(env: ImgEnv, optstr: string, opts: ImgOpenOptions, failStatus: number): Promise<BlockDriverState> {
  return openImageOpts(env.o, optstr, {
    base: baseOpenOptions(env, { ...opts, forceShare: undefined }),
    format: opts.format,
    forceShare: opts.forceShare === true,
    failStatus,
    message: openErrorMessage,
  });
}

/** QEMU's wording for open failures our layers word differently. */
export function openErrorMessage(e: unknown, filename: string): string {
  // file-posix refuses anything that is not a regular file (or block device) with this text.
  if (isBlockError(e, 'EISDIR')) return `'file' driver requires '${e.path ?? filename}' to be a regular file`;
  return errorMessage(e);
}

export async function openImage(env: ImgEnv, filename: string, opts: ImgOpenOptions): Promise<BlockDriverState> {
  if (filename === '') throw new Error("The 'file' block driver requires a file name");
  return BlockDriverState.open(filename, baseOpenOptions(env, opts));
}

/** The open flags a subcommand asks for (qemu-img's BDRV_O_* flags). */
function baseOpenOptions(env: ImgEnv, opts: ImgOpenOptions): OpenOptions {
  const o: OpenOptions = {
    registry: env.registry,
    readOnly: opts.readOnly ?? false,
    noBacking: opts.noBacking,
    check: opts.check,
    forceShare: opts.forceShare,
  };
  if (opts.noFlush === true) o.noFlush = true;
  if (opts.format !== undefined) o.format = opts.format;
  if (opts.backingFormat !== undefined) o.backingFormat = opts.backingFormat;
  // Deprecation warnings met while opening print as qemu-img's warn_report.
  o.onWarning = (m) => env.o.warn(m);
  return o;
}

/** An I/O failure as qemu-img prints it after strerror(): the errno text of a BlockError. */
export function errnoMessage(e: unknown): string {
  return isBlockError(e) ? e.errnoMessage : errorMessage(e);
}

/** Close and ignore errors (cleanup paths after a failure was already reported). */
export async function closeQuietly(bs: BlockDriverState | null | undefined): Promise<void> {
  if (bs) await bs.close().catch(() => undefined);
}

/**
 * bdrv_find_backing_image: the node of bs's chain (below bs) whose file is `name`. An open chain
 * never holds one file twice (opening such a chain fails with ELOOP), so the first match is the
 * only one.
 */
export function findBackingImage(bs: BlockDriverState, name: string): BlockDriverState | null {
  const want = resolve(name);
  for (let b = bs.backing; b; b = b.backing) {
    if (resolve(b.filename) === want) return b;
  }
  return null;
}

/** The format node's driver name. */
export function formatName(bs: BlockDriverState): string {
  return bs.driver.formatName;
}

// ---------------------------------------------------------------------------------------------
// JSON as QEMU prints it: QDict iteration order (hash buckets), 4-space pretty printing
// ---------------------------------------------------------------------------------------------

/** Entries in the order a QDict built by inserting `entries` in order would iterate them. */
export function qdictOrder<T>(entries: Array<[string, T]>): Array<[string, T]> {
  const byKey = new Map(entries);
  return qdictKeyOrder(entries.map(([k]) => k)).map((k) => [k, byKey.get(k) as T]);
}

export type JsonValue = string | number | boolean | JsonValue[] | JsonObject;
/** An object whose keys are printed in QDict order (insertion order = QAPI field order). */
export interface JsonObject {
  readonly qdict: Array<[string, JsonValue]>;
}

export function jsonObject(entries: Array<[string, JsonValue | undefined]>): JsonObject {
  return { qdict: entries.filter((e): e is [string, JsonValue] => e[1] !== undefined) };
}

/** qobject_to_json_pretty. */
export function toJsonPretty(v: JsonValue, level = 0): string {
  const ind = (n: number): string => '    '.repeat(n);
  if (typeof v === 'string') return quoteJsonString(v);
  if (typeof v === 'number') return String(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (Array.isArray(v)) {
    if (v.length === 0) return '[\n' + ind(level) + ']';
    return `[\n${v.map((x) => ind(level + 1) + toJsonPretty(x, level + 1)).join(',\n')}\n${ind(level)}]`;
  }
  const entries = qdictOrder(v.qdict);
  if (entries.length === 0) return '{\n' + ind(level) + '}';
  return `{\n${entries.map(([k, x]) => `${ind(level + 1)}${quoteJsonString(k)}: ${toJsonPretty(x, level + 1)}`).join(',\n')}\n${ind(level)}}`;
}

// ---------------------------------------------------------------------------------------------
// Progress meter (util/qemu-progress.c): single-precision float state, "    (%3.2f/100%)\r"
// ---------------------------------------------------------------------------------------------

export class Progress {
  private current = 0;
  private lastPrint = 0;
  constructor(
    private readonly o: ToolOutput,
    private readonly enabled: boolean,
    private readonly minSkip: number,
  ) {}

  /** delta is a fraction of max (percent) unless max is 0, then an absolute value. */
  print(delta: number, max: number): void {
    const f = Math.fround;
    let current = max === 0 ? f(delta) : f(this.current + f(f(delta / 100) * max));
    if (current > 100) current = 100;
    this.current = current;
    if (
      current > f(this.lastPrint + this.minSkip) ||
      current < f(this.lastPrint - this.minSkip) ||
      current === 0 ||
      current === 100
    ) {
      this.lastPrint = this.current;
      if (this.enabled) {
        this.o.out(`    (${formatFixed(this.current, 2).padStart(3)}/100%)\r`);
        this.o.flush();
      }
    }
  }

  end(): void {
    if (this.enabled) this.o.out('\n');
  }
}

// ---------------------------------------------------------------------------------------------
// -o option lists (QemuOpts): "a=b,c=d", ",," escapes a comma, "help" / "?" ask for help
// ---------------------------------------------------------------------------------------------

export function isValidOptionList(s: string): boolean {
  // Empty lists and a trailing lone comma are refused; ",," is an escaped comma.
  if (s === '') return false;
  let i = s.length - 1;
  let commas = 0;
  while (i >= 0 && s[i] === ',') {
    commas++;
    i--;
  }
  return commas % 2 === 0;
}

export function splitOptionList(s: string): Array<[string, string | undefined]> {
  const out: Array<[string, string | undefined]> = [];
  let cur = '';
  const items: string[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === ',') {
      if (s[i + 1] === ',') {
        cur += ',';
        i++;
        continue;
      }
      items.push(cur);
      cur = '';
      continue;
    }
    cur += s[i];
  }
  items.push(cur);
  for (const it of items) {
    const eq = it.indexOf('=');
    out.push(eq < 0 ? [it, undefined] : [it.slice(0, eq), it.slice(eq + 1)]);
  }
  return out;
}

export function hasHelpOption(s: string): boolean {
  return splitOptionList(s).some(([k, v]) => v === undefined && (k === 'help' || k === '?'));
}

/** The create options of a driver as QEMU's help lists them. */
function optionTypeName(type: string): string {
  switch (type) {
    case 'size':
      return 'size';
    case 'number':
      return 'num';
    case 'bool':
      return 'bool (on/off)';
    default:
      return 'str';
  }
}

export function printOptionHelp(o: ToolOutput, drv: BlockDriver, extra: BlockDriver | null): void {
  const specs = [...(drv.createOptions ?? []), ...(extra?.createOptions ?? [])];
  const seen = new Set<string>();
  const lines: string[] = [];
  for (const s of specs) {
    if (seen.has(s.name)) continue;
    seen.add(s.name);
    let line = `  ${s.name}=<${optionTypeName(s.type)}>`;
    if (line.length < 24) line += ' '.repeat(24 - line.length);
    lines.push(`${line} - ${s.help}`);
  }
  lines.sort();
  for (const l of lines) o.out(`${l}\n`);
}

/**
 * The create options qemu-img takes for a format: its own, then its protocol's (those not
 * already listed), in that order (bdrv_img_create's qemu_opts_append), which is also the
 * order of the Formatting line.
 */
export function createOptionSpecs(drv: BlockDriver, proto: BlockDriver | null): CreateOptionSpec[] {
  const own = drv.createOptions ?? [];
  const extra = proto === null || proto === drv ? [] : (proto.createOptions ?? []).filter((p) => !own.some((s) => s.name === p.name));
  return [...own, ...extra];
}

/**
 * Parse an -o list against a driver's create options (QemuOpts semantics: last value wins,
 * unknown names refused). Values of size options are parsed like QEMU's parse_option_size.
 * Returns camelCase-keyed values plus the QEMU names in first-seen order.
 */
export function parseCreateOptions(drv: BlockDriver, list: string, proto: BlockDriver | null = null): Map<string, string | number | boolean> {
  const specs = createOptionSpecs(drv, proto);
  const out = new Map<string, string | number | boolean>();
  if (list === '') return out;
  for (const [name, value] of splitOptionList(list)) {
    const spec = specs.find((s) => s.name === name);
    if (!spec) throw new Error(`Invalid parameter '${name}'`);
    switch (spec.type) {
      case 'size':
      case 'number': {
        const v = parseOptionSize(name, value ?? '');
        if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`Parameter '${name}' is too large for this implementation`);
        out.set(name, Number(v));
        break;
      }
      case 'bool':
        if (value === undefined || value === 'on') out.set(name, true);
        else if (value === 'off') out.set(name, false);
        else throw new Error(`Parameter '${name}' expects 'on' or 'off'`);
        break;
      default:
        out.set(name, value ?? '');
    }
  }
  return out;
}

/** QEMU's size of a -S / bs value etc: qemu_strtosz without the message. */
export function strtoszOrNull(s: string): bigint | null {
  const r = qemuStrtosz(s);
  return r.ok ? r.value : null;
}

/** Key of a create option spec by QEMU name. */
export function optionKey(drv: BlockDriver, name: string): string {
  return drv.createOptions?.find((s) => s.name === name)?.key ?? name;
}

/**
 * QEMU's path_combine, which info prints verbatim: a relative backing name is appended to the
 * image name's directory prefix (up to and including its last '/'), without normalising.
 */
export function qemuPathCombine(base: string, filename: string): string {
  if (filename.startsWith('/')) return filename;
  const colon = base.indexOf(':');
  const slash = base.indexOf('/');
  let p = colon > 0 && (slash < 0 || colon < slash) ? colon + 1 : 0;
  const last = base.lastIndexOf('/');
  if (last + 1 > p) p = last + 1;
  return base.slice(0, p) + filename;
}
