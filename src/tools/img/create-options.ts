// -o option lists (QemuOpts): "a=b,c=d", ",," escapes a comma, "help" / "?" ask for help;
// parsed against a driver's create options (and its protocol's), as qemu-img create and
// convert take them.
import type { BlockDriver, CreateOptionSpec, CreateOptions } from '../../index.js';
import { ToolExit, type ToolOutput } from '../shared/output.js';
import { parseOptionSize } from '../shared/size.js';

/** -o accumulation: each list is checked, then appended with a comma. */
export function accumulateOptions(o: ToolOutput, acc: string | null, arg: string): string {
  if (!isValidOptionList(arg)) {
    o.error(`Invalid option list: ${arg}`);
    throw new ToolExit(1);
  }
  return acc === null ? arg : `${acc},${arg}`;
}

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
  printOptionSpecs(o, [...(drv.createOptions ?? []), ...(extra?.createOptions ?? [])]);
}

/** qemu_opts_print_help: one line per option, sorted by name. */
export function printOptionSpecs(o: ToolOutput, specs: readonly CreateOptionSpec[]): void {
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
  return parseOptionList(createOptionSpecs(drv, proto), list);
}

/** Parse an -o list against `specs` (see parseCreateOptions). */
export function parseOptionList(specs: readonly CreateOptionSpec[], list: string): Map<string, string | number | boolean> {
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

/** Parsed option values keyed for a driver hook (CreateOptions: each spec's camelCase key). */
export function optionsByKey(specs: readonly CreateOptionSpec[], values: Map<string, string | number | boolean>): CreateOptions {
  const out: CreateOptions = {};
  for (const [name, v] of values) out[specs.find((s) => s.name === name)?.key ?? name] = v;
  return out;
}
