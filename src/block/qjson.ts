/**
 * QEMU's JSON dialect for `json:{...}` filenames (qobject/json-lexer.c, json-streamer.c,
 * json-parser.c): single-quoted strings are accepted, integers stay exact (bigint past 2^53),
 * and errors carry QEMU's words ("JSON parse error, stray '@'", "premature EOI", "Expecting
 * at most one JSON value"), because the tools print them verbatim.
 *
 * How errors are chosen, as QEMU's streamer does: tokens are collected until the brackets
 * balance, then that message is parsed; a lexical error (a stray character) ends the current
 * message at once; the first error wins.
 */
import { BlockError } from './errors.js';

/** A parsed JSON value (QObject): objects keep their key order. */
export type QValue = string | number | bigint | boolean | null | QValue[] | { [key: string]: QValue };

/** Nesting bound (QEMU's MAX_NESTING): a hostile filename must not exhaust the stack. */
export const JSON_MAX_NESTING = 1024;

type TokType = '{' | '}' | '[' | ']' | ':' | ',' | 'string' | 'int' | 'float' | 'keyword';

interface Token {
  type: TokType;
  text: string;
  /** The decoded string value, for strings; an escape error, if the string has one. */
  value?: string;
  escapeError?: string;
}

class JsonError extends Error {}

/** Decode the escapes of a quoted string token (json-parser.c's parse_string). */
function unescape(tok: string): { value: string; error?: string } {
  let out = '';
  for (let i = 1; i < tok.length - 1; i++) {
    const c = tok[i];
    if (c !== '\\') {
      out += c;
      continue;
    }
    const e = tok[++i];
    const simple: Record<string, string> = { '"': '"', "'": "'", '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
    if (e in simple) out += simple[e];
    else if (e === 'u') {
      const hex = tok.slice(i + 1, i + 5);
      if (!/^[0-9a-fA-F]{4}$/.test(hex)) return { value: out, error: 'invalid hex escape sequence in string' };
      out += String.fromCharCode(parseInt(hex, 16));
      i += 4;
    } else return { value: out, error: 'invalid escape sequence in string' };
  }
  return { value: out };
}

const isDigit = (c: string | undefined): boolean => c !== undefined && c >= '0' && c <= '9';

/**
 * The lexer's number states: a number ends at any character that cannot continue it, except
 * where the grammar needs more ('-' without a digit, '0' followed by a digit, '1.' or '1e'
 * without digits): then the text up to and including that character is a stray.
 */
function lexNumber(text: string, start: number): { end: number; float: boolean; stray: boolean } {
  let i = start;
  const bad = (): { end: number; float: boolean; stray: boolean } => ({ end: Math.min(i + 1, text.length), float: false, stray: true });
  if (text[i] === '-') i++;
  if (!isDigit(text[i])) return bad();
  if (text[i] === '0') {
    i++;
    if (isDigit(text[i])) return bad();
  } else while (isDigit(text[i])) i++;
  let float = false;
  if (text[i] === '.') {
    i++;
    if (!isDigit(text[i])) return bad();
    while (isDigit(text[i])) i++;
    float = true;
  }
  if (text[i] === 'e' || text[i] === 'E') {
    i++;
    if (text[i] === '+' || text[i] === '-') i++;
    if (!isDigit(text[i])) return bad();
    while (isDigit(text[i])) i++;
    float = true;
  }
  return { end: i, float, stray: false };
}

/**
 * Split into tokens. A character that cannot continue or start a token is a stray: its text
 * is what the lexer had gathered for the token so far plus that character ('-}', '01').
 */
function lex(text: string): { tokens: Token[]; stray?: { index: number; text: string } } {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r') {
      i++;
    } else if ('{}[]:,'.includes(c)) {
      tokens.push({ type: c as TokType, text: c });
      i++;
    } else if (c === '"' || c === "'") {
      let j = i + 1;
      for (; j < text.length && text[j] !== c; j++) {
        // Control characters are not allowed inside a string.
        if (text.charCodeAt(j) < 0x20) return { tokens, stray: { index: tokens.length, text: text.slice(i, j + 1) } };
        if (text[j] === '\\') j++;
      }
      // An unterminated string is a stray holding the rest of the input.
      if (j >= text.length) return { tokens, stray: { index: tokens.length, text: text.slice(i) } };
      const raw = text.slice(i, j + 1);
      const { value, error } = unescape(raw);
      tokens.push({ type: 'string', text: raw, value, escapeError: error });
      i = j + 1;
    } else if (c === '-' || (c >= '0' && c <= '9')) {
      const n = lexNumber(text, i);
      if (n.stray) return { tokens, stray: { index: tokens.length, text: text.slice(i, n.end) } };
      tokens.push({ type: n.float ? 'float' : 'int', text: text.slice(i, n.end) });
      i = n.end;
    } else if (c >= 'a' && c <= 'z') {
      let j = i;
      while (j < text.length && text[j] >= 'a' && text[j] <= 'z') j++;
      tokens.push({ type: 'keyword', text: text.slice(i, j) });
      i = j;
    } else {
      return { tokens, stray: { index: tokens.length, text: c } };
    }
  }
  return { tokens };
}

/** Recursive descent over one message's tokens (json-parser.c). */
class Parser {
  private pos = 0;
  constructor(private readonly toks: Token[]) {}

  private fail(msg: string): never {
    throw new JsonError(`JSON parse error, ${msg}`);
  }

  private peek(): Token {
    const t = this.toks[this.pos];
    if (t === undefined) this.fail('premature EOI');
    return t;
  }

  private pop(): Token {
    const t = this.peek();
    this.pos++;
    return t;
  }

  get done(): boolean {
    return this.pos >= this.toks.length;
  }

  value(depth: number): QValue {
    if (depth > JSON_MAX_NESTING) throw new JsonError('JSON nesting depth limit exceeded');
    const t = this.peek();
    switch (t.type) {
      case '{':
        return this.object(depth);
      case '[':
        return this.array(depth);
      case 'string':
        this.pos++;
        if (t.escapeError !== undefined) this.fail(t.escapeError);
        return t.value ?? '';
      case 'int': {
        this.pos++;
        const b = BigInt(t.text);
        // Past the 64-bit range QEMU keeps a double, as here.
        if (b < -(1n << 63n) || b >= 1n << 64n) return Number(t.text);
        return Number.isSafeInteger(Number(b)) ? Number(b) : b;
      }
      case 'float':
        this.pos++;
        return Number(t.text);
      case 'keyword':
        this.pos++;
        if (t.text === 'true') return true;
        if (t.text === 'false') return false;
        if (t.text === 'null') return null;
        return this.fail(`invalid keyword '${t.text}'`);
      default:
        return this.fail('expecting value');
    }
  }

  private object(depth: number): QValue {
    this.pop();
    const dict: { [key: string]: QValue } = {};
    if (this.peek().type === '}') {
      this.pos++;
      return dict;
    }
    for (;;) {
      const key = this.value(depth + 1);
      if (typeof key !== 'string') this.fail('key is not a string in object');
      if (this.pop().type !== ':') this.fail('missing : in object pair');
      // A repeated key replaces the earlier value, as qdict_put does.
      Object.defineProperty(dict, key, { value: this.value(depth + 1), enumerable: true, writable: true, configurable: true });
      const sep = this.pop();
      if (sep.type === '}') return dict;
      if (sep.type !== ',') this.fail('expected separator in dict');
    }
  }

  private array(depth: number): QValue {
    this.pop();
    const list: QValue[] = [];
    if (this.peek().type === ']') {
      this.pos++;
      return list;
    }
    for (;;) {
      list.push(this.value(depth + 1));
      const sep = this.pop();
      if (sep.type === ']') return list;
      if (sep.type !== ',') this.fail('expected separator in list');
    }
  }
}

/** Where the first complete top-level message ends (brackets balanced), or -1. */
function messageEnd(tokens: Token[]): number {
  let depth = 0;
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i].type;
    if (t === '{' || t === '[') depth++;
    else if (t === '}' || t === ']') depth--;
    if (depth <= 0) return i + 1;
  }
  return -1;
}

/**
 * Parse `text` as one JSON value, as qobject_from_json does. Throws a BlockError (EINVAL)
 * whose message is QEMU's, without any prefix.
 */
export function parseQemuJson(text: string): QValue {
  const { tokens, stray } = lex(text);
  try {
    const end = messageEnd(tokens);
    // A stray character inside the first message ends it with that error.
    if (stray !== undefined && (end < 0 || stray.index < end)) {
      throw new JsonError(`JSON parse error, stray '${stray.text}'`);
    }
    if (tokens.length === 0) throw new JsonError('Expecting a JSON value');
    const first = end < 0 ? tokens : tokens.slice(0, end);
    const p = new Parser(first);
    const value = p.value(0);
    if (end >= 0 && (end < tokens.length || stray !== undefined)) throw new JsonError('Expecting at most one JSON value');
    return value;
  } catch (e) {
    if (e instanceof JsonError) throw new BlockError('EINVAL', e.message, { op: 'json' });
    throw e;
  }
}

/** printf("%.17g"): how QEMU turns a JSON float into an option string. */
export function formatDouble17g(x: number): string {
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : x < 0 ? '-inf' : 'nan';
  if (x === 0) return Object.is(x, -0) ? '-0' : '0';
  const e = Math.floor(Math.log10(Math.abs(x)));
  const trim = (s: string): string => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
  if (e < -4 || e >= 17) {
    const [m, exp] = x.toExponential(16).split('e');
    const n = Number(exp);
    return `${trim(m)}e${n < 0 ? '-' : '+'}${String(Math.abs(n)).padStart(2, '0')}`;
  }
  return trim(x.toPrecision(17));
}

/** qobject_to_json (compact form): `{"a": 1, "b": [true, null]}`, keys in the order given. */
export function formatQemuJson(v: QValue, order: (keys: string[]) => string[] = (k) => k): string {
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'bigint') return v.toString();
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : formatDouble17g(v);
  if (typeof v === 'string') return quoteJsonString(v);
  if (Array.isArray(v)) return `[${v.map((x) => formatQemuJson(x, order)).join(', ')}]`;
  const keys = order(Object.keys(v));
  return `{${keys.map((k) => `${quoteJsonString(k)}: ${formatQemuJson(v[k], order)}`).join(', ')}}`;
}

/** QEMU's to_json string quoting: the usual escapes, other control and non-ASCII as \uXXXX. */
export function quoteJsonString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) ?? 0;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c >= 0x7f) {
      // Astral characters become a surrogate pair, as QEMU writes them.
      for (let i = 0; i < ch.length; i++) out += `\\u${ch.charCodeAt(i).toString(16).toUpperCase().padStart(4, '0')}`;
    } else out += ch;
  }
  return `${out}"`;
}
