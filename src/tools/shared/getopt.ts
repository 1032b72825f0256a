// glibc's getopt_long, ported as a state machine: qemu-img's and qemu-io's messages quote
// argv[optind - 1] and so depend on exactly how getopt advances and permutes.

export interface LongOption {
  name: string;
  /** 0 no_argument, 1 required_argument, 2 optional_argument. */
  hasArg: 0 | 1 | 2;
  /** Value returned (a short option letter or any unique string). */
  val: string;
}

export type GetoptResult =
  | { kind: 'opt'; opt: string; arg: string | undefined }
  | { kind: 'missing'; opt: string }
  | { kind: 'unknown'; opt: string }
  | { kind: 'end' };

/**
 * A port of glibc's getopt_long state machine over a copy of argv (argv[0] is the command
 * name, as in the C programs). `optind` and the (permuted) `argv` are observable so that
 * messages can quote `argv[optind - 1]` exactly as qemu-img does.
 */
export class Getopt {
  readonly argv: string[];
  optind = 1;
  optarg: string | undefined;
  private nextchar: string | null = null;
  private firstNonopt = 1;
  private lastNonopt = 1;
  private readonly permute: boolean;
  private readonly shortopts: string;
  private readonly colon: boolean;

  constructor(
    argv: readonly string[],
    optstring: string,
    private readonly longopts: readonly LongOption[] = [],
  ) {
    this.argv = [...argv];
    let s = optstring;
    this.permute = true;
    if (s.startsWith('+') || s.startsWith('-')) {
      this.permute = !s.startsWith('+');
      s = s.slice(1);
    }
    this.colon = s.startsWith(':');
    this.shortopts = s;
  }

  private isNonOption(i: number): boolean {
    const a = this.argv[i];
    return a[0] !== '-' || a.length === 1;
  }

  /** glibc's exchange(): move the skipped non-options after the options just processed. */
  private exchange(): void {
    const a = this.argv;
    const nonopts = a.slice(this.firstNonopt, this.lastNonopt);
    const opts = a.slice(this.lastNonopt, this.optind);
    a.splice(this.firstNonopt, this.optind - this.firstNonopt, ...opts, ...nonopts);
    this.firstNonopt += this.optind - this.lastNonopt;
    this.lastNonopt = this.optind;
  }

  /** The next option; 'missing'/'unknown' correspond to getopt returning ':' / '?'. */
  next(): GetoptResult {
    const argc = this.argv.length;
    this.optarg = undefined;
    if (this.nextchar === null || this.nextchar === '') {
      if (this.lastNonopt > this.optind) this.lastNonopt = this.optind;
      if (this.firstNonopt > this.optind) this.firstNonopt = this.optind;
      if (this.permute) {
        if (this.firstNonopt !== this.lastNonopt && this.lastNonopt !== this.optind) this.exchange();
        else if (this.lastNonopt !== this.optind) this.firstNonopt = this.optind;
        while (this.optind < argc && this.isNonOption(this.optind)) this.optind++;
        this.lastNonopt = this.optind;
      }
      if (this.optind !== argc && this.argv[this.optind] === '--') {
        this.optind++;
        if (this.firstNonopt !== this.lastNonopt && this.lastNonopt !== this.optind) this.exchange();
        else if (this.firstNonopt === this.lastNonopt) this.firstNonopt = this.optind;
        this.lastNonopt = argc;
        this.optind = argc;
      }
      if (this.optind === argc) {
        if (this.firstNonopt !== this.lastNonopt) this.optind = this.firstNonopt;
        return { kind: 'end' };
      }
      if (this.isNonOption(this.optind)) {
        // REQUIRE_ORDER ('+'): stop at the first non-option.
        return { kind: 'end' };
      }
      const cur = this.argv[this.optind];
      if (this.longopts.length > 0 && cur[1] === '-') {
        this.nextchar = cur.slice(2);
        return this.longOption();
      }
      this.nextchar = cur.slice(1);
    }
    const c = this.nextchar[0];
    this.nextchar = this.nextchar.slice(1);
    // optind moves on when the last character of the element is being processed.
    if (this.nextchar === '') this.optind++;
    const idx = this.shortopts.indexOf(c);
    if (idx < 0 || c === ':' || c === ';') return { kind: 'unknown', opt: c };
    const takesArg = this.shortopts[idx + 1] === ':';
    const optional = takesArg && this.shortopts[idx + 2] === ':';
    if (!takesArg) return { kind: 'opt', opt: c, arg: undefined };
    if (optional) {
      let arg: string | undefined;
      if (this.nextchar !== '') {
        arg = this.nextchar;
        this.optind++;
      }
      this.nextchar = null;
      this.optarg = arg;
      return { kind: 'opt', opt: c, arg };
    }
    let arg: string;
    if (this.nextchar !== '') {
      arg = this.nextchar;
      this.optind++;
    } else if (this.optind === argc) {
      this.nextchar = null;
      return this.colon ? { kind: 'missing', opt: c } : { kind: 'unknown', opt: c };
    } else {
      arg = this.argv[this.optind++];
    }
    this.nextchar = null;
    this.optarg = arg;
    return { kind: 'opt', opt: c, arg };
  }

  private longOption(): GetoptResult {
    const argc = this.argv.length;
    const text = this.nextchar ?? '';
    const eq = text.indexOf('=');
    const name = eq >= 0 ? text.slice(0, eq) : text;
    let found: LongOption | undefined = this.longopts.find((o) => o.name === name);
    if (found === undefined) {
      let ambiguous = false;
      for (const o of this.longopts) {
        if (!o.name.startsWith(name)) continue;
        if (found === undefined) found = o;
        else if (found.hasArg !== o.hasArg || found.val !== o.val) ambiguous = true;
      }
      if (ambiguous) {
        this.nextchar = null;
        this.optind++;
        return { kind: 'unknown', opt: `--${text}` };
      }
    }
    if (found === undefined) {
      this.nextchar = null;
      this.optind++;
      return { kind: 'unknown', opt: `--${text}` };
    }
    this.optind++;
    this.nextchar = null;
    if (eq >= 0) {
      if (found.hasArg === 0) return { kind: 'unknown', opt: `--${found.name}` };
      this.optarg = text.slice(eq + 1);
    } else if (found.hasArg === 1) {
      if (this.optind < argc) this.optarg = this.argv[this.optind++];
      else return this.colon ? { kind: 'missing', opt: `--${found.name}` } : { kind: 'unknown', opt: `--${found.name}` };
    }
    return { kind: 'opt', opt: found.val, arg: this.optarg };
  }

  /** argv[optind - 1]: what qemu-img quotes in "unrecognized option" / "missing argument". */
  get lastElement(): string {
    return this.argv[this.optind - 1];
  }

  /** Arguments left after the options (permuted non-options first). */
  rest(): string[] {
    return this.argv.slice(this.optind);
  }
}

// ---------------------------------------------------------------------------------------------
// Option tables: a command's options as data, read by one loop
// ---------------------------------------------------------------------------------------------

/**
 * One option of a command: its short letter and/or long name, whether it takes an argument,
 * and what it does to the command's parsed state `S` (`ctx` is what the command runs with:
 * its output, its session). `set` returns a number to stop parsing with that value (qemu-io's
 * "return ret" from inside the getopt loop), nothing to go on.
 */
export interface OptionDef<S, C> {
  short?: string;
  long?: string;
  /** 0 no argument (default), 1 required, 2 optional. */
  arg?: 0 | 1 | 2;
  set(state: S, arg: string, ctx: C): number | void;
}

export type OptionTable<S, C> = readonly OptionDef<S, C>[];

/** What getopt returns for the option: the letter, or the long name when there is none. */
function keyOf(d: OptionDef<unknown, unknown>): string {
  return d.short ?? d.long ?? '';
}

/** The optstring of a table (`prefix`: '+' stops at the first non-option, ':' reports ':'). */
export function optstringOf(table: OptionTable<never, never>, prefix: string): string {
  const suffix = ['', ':', '::'];
  return prefix + table.map((d) => (d.short === undefined ? '' : d.short + suffix[d.arg ?? 0])).join('');
}

/** The long options of a table, in table order (glibc lists ambiguous candidates so). */
export function longoptsOf(table: OptionTable<never, never>): LongOption[] {
  return table.flatMap((d) => (d.long === undefined ? [] : [{ name: d.long, hasArg: d.arg ?? 0, val: keyOf(d) }]));
}

export type TableResult =
  | { kind: 'end'; g: Getopt }
  | { kind: 'error'; error: 'missing' | 'unknown'; opt: string; g: Getopt }
  | { kind: 'stop'; value: number; g: Getopt };

/**
 * Run getopt_long over `argv` with the options of `table`, applying each to `state` in
 * command-line order. Stops at the first error or at a value an option's `set` returned.
 */
export function getoptTable<S, C>(argv: readonly string[], table: OptionTable<S, C>, state: S, ctx: C, prefix = ':'): TableResult {
  const g = new Getopt(argv, optstringOf(table, prefix), longoptsOf(table));
  for (;;) {
    const r = g.next();
    if (r.kind === 'end') return { kind: 'end', g };
    if (r.kind !== 'opt') return { kind: 'error', error: r.kind, opt: r.opt, g };
    const def = table.find((d) => keyOf(d) === r.opt);
    const value = def?.set(state, r.arg ?? '', ctx);
    if (typeof value === 'number') return { kind: 'stop', value, g };
  }
}

/**
 * What glibc's getopt_long prints (after "prog: ") for an option it rejected: `opt` is the
 * result's option ('x' or '--name[=value]'), `longopts` the table glibc searched.
 */
export function getoptDiagnostic(error: 'missing' | 'unknown', opt: string, longopts: readonly LongOption[]): string {
  if (!opt.startsWith('--')) return error === 'missing' ? `option requires an argument -- '${opt}'` : `invalid option -- '${opt}'`;
  if (error === 'missing') return `option '${opt}' requires an argument`;
  const text = opt.slice(2);
  const eq = text.indexOf('=');
  const name = eq >= 0 ? text.slice(0, eq) : text;
  const candidates = longopts.filter((l) => l.name.startsWith(name));
  const found = longopts.find((l) => l.name === name) ?? (candidates.length === 1 ? candidates[0] : undefined);
  if (found !== undefined) return `option '--${found.name}' doesn't allow an argument`;
  // glibc quotes an ambiguous abbreviation with its =value, as typed.
  if (candidates.length > 1) return `option '${opt}' is ambiguous; possibilities:${candidates.map((c) => ` '--${c.name}'`).join('')}`;
  return `unrecognized option '${opt}'`;
}
