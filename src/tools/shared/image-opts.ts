// QEMU's option model as the tools speak it: QemuOpts strings parsed "noisily" (warnings and
// errors printed as qemu-img / qemu-io print them), --object processed as
// user_creatable_process_cmdline does, and images opened from option strings (img_open_opts,
// qemu-io's openfile with a QDict).
import {
  BlockBackend,
  BlockError,
  ObjectTable,
  optsToQDict,
  parseObjectDefinition,
  parseOptsString,
  type FlatQDict,
  type OpenOptions,
  type OptsListRules,
  QEMU_IMG_IMAGE_OPTS,
} from '../../index.js';
import { toolHost } from './host.js';
import { ToolExit, errorMessage, type ToolOutput } from './output.js';

/**
 * qemu_opts_parse_noisily: the options as a QDict (every value a string), or null after
 * printing QEMU's error.
 */
export function parseOptsNoisily(o: ToolOutput, text: string, rules: OptsListRules): Map<string, string> | null {
  try {
    const parsed = parseOptsString(text, rules);
    for (const w of parsed.warnings) {
      o.warn(w.warning);
      o.errRaw(`${w.hint}\n`);
    }
    const d = new Map<string, string>();
    for (const [k, v] of optsToQDict(parsed)) if (typeof v === 'string') d.set(k, v);
    return d;
  } catch (e) {
    o.error(errorMessage(e));
    return null;
  }
}

/** Read a host file for an object (a secret's file=), with the errno text on failure. */
function readHostFile(path: string): Uint8Array {
  try {
    return toolHost().readFile(path);
  } catch (e) {
    const code = (e as { code?: string }).code;
    throw new BlockError(code === 'EACCES' ? 'EACCES' : code === 'EISDIR' ? 'EISDIR' : 'ENOENT', undefined, { path, cause: e });
  }
}

/**
 * user_creatable_process_cmdline for one --object argument. `help` lists the types and
 * `TYPE,help` a type's properties (exit 0); a bad definition prints QEMU's message (exit 1).
 * Returns the exit status to leave with, or null to go on.
 */
export function processObjectArg(o: ToolOutput, table: ObjectTable, arg: string): number | null {
  let def: Map<string, string>;
  try {
    def = parseObjectDefinition(arg);
  } catch (e) {
    o.error(errorMessage(e));
    return 1;
  }
  const type = def.get('qom-type');
  if (type === 'help' || type === '?') {
    o.out(`List of user creatable objects:\n${table.typeNames().map((n) => `  ${n}\n`).join('')}`);
    return 0;
  }
  if (def.has('help') || def.has('?')) {
    const props = type === undefined ? undefined : table.typeProperties(type);
    if (props !== undefined && type !== undefined) {
      o.out(`${type} options:\n${props.map((p) => `  ${p.name}=<${p.type}>\n`).join('')}`);
      return 0;
    }
  }
  try {
    table.add(def, { readFile: readHostFile });
  } catch (e) {
    o.error(errorMessage(e));
    return 1;
  }
  return null;
}

/**
 * -U against the image's own force-share option: qemu-img and qemu-io refuse anything but
 * "on" there, then set it. Returns false after printing `message`.
 */
export function applyForceShare(o: ToolOutput, qdict: FlatQDict, message: string): boolean {
  const v = qdict.get('force-share');
  if (v !== undefined && v !== 'on' && v !== true) {
    o.error(message);
    return false;
  }
  qdict.set('force-share', 'on');
  return true;
}

/**
 * blk_new_open(name, qdict): open the image as the user's BlockBackend, through the options
 * model when there are options (either may be missing, not both), else the plain opener. A
 * read-write open of a root the options made read-only fails ("Block node is read-only").
 */
export async function openWithOptions(name: string | null, qdict: FlatQDict | null, base: OpenOptions): Promise<BlockBackend> {
  if (qdict === null || qdict.size === 0) {
    if (name === null) throw new BlockError('EINVAL', 'Must specify either driver or file', { op: 'open' });
    return BlockBackend.open(name, base);
  }
  return BlockBackend.open(new Map(qdict), base, name);
}

export interface ImageOptsOpen {
  /** The flags the command opens with (read-only, no backing...). */
  base: OpenOptions;
  /** -f, which --image-opts excludes. */
  format: string | undefined;
  /** -U: force-share=on, which the options must not contradict. */
  forceShare: boolean;
  /** The exit status of a failed open (compare's is 2). */
  failStatus: number;
  /** How the command words an open error (default: the error's message). */
  message?: (e: unknown, name: string) => string;
}

/**
 * qemu-img's img_open_opts: `optstr` is the image's options (`driver=qed,file.filename=x`),
 * parsed with the implied key `file`. Prints qemu-img's messages and throws ToolExit on
 * failure: "Could not open 'OPTSTR': ...".
 */
export async function openImageOpts(o: ToolOutput, optstr: string, p: ImageOptsOpen): Promise<BlockBackend> {
  if (p.format !== undefined) {
    o.error('--image-opts and --format are mutually exclusive');
    throw new ToolExit(p.failStatus);
  }
  const qdict = parseOptsNoisily(o, optstr, QEMU_IMG_IMAGE_OPTS);
  if (qdict === null) throw new ToolExit(p.failStatus);
  if (p.forceShare && !applyForceShare(o, qdict, '--force-share/-U conflicts with image options')) throw new ToolExit(p.failStatus);
  try {
    return await openWithOptions(null, qdict, p.base);
  } catch (e) {
    o.error(`Could not open '${optstr}': ${p.message ? p.message(e, optstr) : errorMessage(e)}`);
    throw new ToolExit(p.failStatus);
  }
}
