// blk-io -T: print the block layer's trace points on stderr, one line each, as QEMU's "log"
// trace backend does ("qed_aio_setup s 0x.. acb 0x.. sector_num 0 ..."). Names are QEMU's
// (our camelCase trace names turned back into snake_case); objects print as stable ids
// because there are no pointers to show.
import type { BlockDriverState, TraceEvent } from '../../index.js';
import { toolHost } from '../shared/host.js';
import type { ToolOutput } from '../shared/output.js';

/** An events file is a list of patterns: a bigger one is not one (bounded memory). */
const TRACE_EVENTS_MAX = 1 << 20;

export class TraceOptions {
  readonly patterns: RegExp[] = [];

  /** One -T argument: "[enable=]PATTERN", "events=FILE" (patterns, one a line), "file=..." (ignored). */
  add(o: ToolOutput, arg: string): boolean {
    for (const part of arg.split(',')) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      const key = eq >= 0 ? part.slice(0, eq) : 'enable';
      const value = eq >= 0 ? part.slice(eq + 1) : part;
      if (key === 'enable') this.patterns.push(globToRegExp(value));
      else if (key === 'events') {
        let text: string;
        try {
          text = new TextDecoder().decode(toolHost().readFileHead(value, TRACE_EVENTS_MAX));
        } catch (e) {
          const msg = (e as { code?: string }).code === 'ENOENT' ? 'No such file or directory' : String(e);
          o.errRaw(`${o.prog}:${value}: ${msg}\n`);
          return false;
        }
        for (const line of text.split('\n')) {
          const t = line.trim();
          if (t !== '' && !t.startsWith('#')) this.patterns.push(globToRegExp(t.replace(/^-/, '')));
        }
      }
      // file=: the log goes to stderr here.
    }
    return true;
  }

  get enabled(): boolean {
    return this.patterns.length > 0;
  }

  matches(name: string): boolean {
    return this.patterns.some((p) => p.test(name));
  }
}

function globToRegExp(glob: string): RegExp {
  const re = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${re}$`);
}

/** qedAioSetup -> qed_aio_setup; l2 stays with its digit. */
export function snakeCase(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
}

const ids = new WeakMap<object, number>();
let nextId = 1;

function formatValue(v: unknown): string {
  if (typeof v === 'number' || typeof v === 'bigint') return v.toString();
  if (typeof v === 'boolean') return v ? '1' : '0';
  if (typeof v === 'string') return v;
  if (v === null || v === undefined) return '(nil)';
  if (typeof v === 'object' || typeof v === 'function') {
    let id = ids.get(v);
    if (id === undefined) {
      id = nextId++;
      ids.set(v, id);
    }
    return `0x${id.toString(16)}`;
  }
  return typeof v === 'symbol' ? v.toString() : '?';
}

/** Listen to every node of the image's graph (format, protocol, filters, backing chain). */
export function attachTrace(o: ToolOutput, opts: TraceOptions, bs: BlockDriverState): void {
  if (!opts.enabled) return;
  const seen = new Set<BlockDriverState>();
  const visit = (n: BlockDriverState | null): void => {
    if (n === null || seen.has(n)) return;
    seen.add(n);
    n.events.on('trace', (ev: TraceEvent) => {
      const name = snakeCase(ev.name);
      if (!opts.matches(name)) return;
      const args = Object.entries(ev.args)
        .map(([k, v]) => ` ${snakeCase(k)} ${formatValue(v)}`)
        .join('');
      o.errRaw(`${name}${args}\n`);
    });
    visit(n.file);
    visit(n.backing);
  };
  visit(bs);
}
