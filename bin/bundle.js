// Loads a tool's bundle (dist/bin/<name>.cjs, `npm run bundle`) with V8's code cache
// (<name>.cjs.cache, made by the build): parsing and compiling the ~1 MB bundle took some 40 ms
// of every run; deserializing the cached bytecode instead takes a few. The cache is optional:
// missing, stale (another bundle) or rejected by V8 (another Node, other V8 flags), the bundle
// is compiled from its source as usual.
'use strict';
const { readFileSync } = require('node:fs');
const { dirname, join } = require('node:path');
const { debuglog } = require('node:util');
const { Script } = require('node:vm');

/** NODE_DEBUG=blk-bundle tells whether V8 took the cache. */
const debug = debuglog('blk-bundle');

// V8 checks a cache's header (its version, flags, the source's length, the payload's length),
// not the payload: flipped bits there would crash it, as they would break the bundle itself.
// Its --verify-snapshot-checksum would, but setting a V8 flag at run time costs ~10 ms: Node's
// own modules loaded afterwards no longer match their built-in code cache.

/** A cache file starts with its bundle's first line (a build id) and a newline. */
const NL = 0x0a;

/** The cached data for `source` in `cacheFile`, or undefined when there is none or it is another bundle's. */
function cachedDataFor(cacheFile, source) {
  let buf;
  try {
    buf = readFileSync(cacheFile);
  } catch {
    return undefined;
  }
  const end = buf.indexOf(NL);
  if (end < 0) return undefined;
  // V8 checks the source's length only: bytecode of another bundle of the same length would run.
  if (!source.startsWith(buf.toString('latin1', 0, end + 1))) return undefined;
  return buf.subarray(end + 1);
}

/**
 * The compiled (not yet run) bundle of a tool, or null when it was not built. `script` is the
 * vm.Script, for the build to take its cache from after a warm-up.
 *
 * `variant` names another cache of the same bundle (<name>.cjs<variant>.cache, the whole cache
 * when it is missing): V8 deserializes all of a cache on every start, so a run that needs
 * little takes a cache made by a warm-up of little. `scriptName` (the build's) names the script
 * otherwise than its file, so that V8 compiles it anew rather than reuse what the same process
 * compiled under the file's name (a cache holds every function compiled in its script).
 */
function compileTool(name, variant = '', scriptName = undefined) {
  const file = join(__dirname, '..', 'dist', 'bin', `${name}.cjs`);
  let source;
  try {
    // The bundle is ASCII (esbuild escapes anything else, scripts/bundle.ts): read as latin1, a
    // copy of its bytes, not a UTF-8 decode of a megabyte on every start.
    source = readFileSync(file, 'latin1');
  } catch (e) {
    if (e?.code === 'ENOENT') return null;
    throw e;
  }
  let cacheFile = `${file}${variant}.cache`;
  let cachedData = cachedDataFor(cacheFile, source);
  if (cachedData === undefined && variant !== '') {
    cacheFile = `${file}.cache`;
    cachedData = cachedDataFor(cacheFile, source);
  }
  // The bundle is already the function CommonJS would wrap it in (scripts/bundle.ts): wrapping
  // it here would cost a flat copy of the whole source.
  const script = new Script(source, { filename: scriptName ?? file, cachedData });
  const cached = cachedData !== undefined && !script.cachedDataRejected;
  debug('%s: code cache %s', cacheFile, cached ? 'used' : cachedData === undefined ? 'missing' : 'rejected');
  return { script, file, cacheFile, cached };
}

/** V8's default interrupt budget. */
const INTERRUPT_BUDGET = 67584;

/**
 * `times` (4 unless told) times V8's default interrupt budget for the rest of the run: a
 * function is optimised by TurboFan only after that many times as much of it has run in the
 * baseline tiers (the launchers say which tools, how many times and why). Called once the tool
 * is loaded: V8 takes a code cache (ours, and Node's for its own modules) only under the flags
 * it was made with, and a function gets its budget when first called, so the request paths
 * still get this one.
 */
function raiseInterruptBudget(times = 4) {
  setV8Flag(`--interrupt-budget=${INTERRUPT_BUDGET * times}`);
}

/**
 * Less inlining by TurboFan (V8's default cumulative budget is 920 bytes of bytecode) for the
 * rest of the run, set once the tool is loaded as raiseInterruptBudget is: map of a fragmented
 * image runs its walk and its output tens of thousands of times in a fresh process, and
 * TurboFan spent more compiling them, callees inlined into each caller, than they then ran:
 * with 200, map's CPU fell by about 30 ms of 170 (both formats; bench/RESULTS.md, "Map's walk
 * in batches").
 */
function lessInlining() {
  setV8Flag('--max-inlined-bytecode-size-cumulative=200');
}

/** node:v8 is loaded only here: it loads Node's stream modules, which the other runs do without. */
function setV8Flag(flag) {
  debug('V8 flags: %s', flag);
  require('node:v8').setFlagsFromString(flag);
}

/** Run a compiled bundle as the CommonJS module it is; returns its exports. */
function runTool({ script, file }) {
  const module = { exports: {} };
  const fn = script.runInThisContext();
  // The bundle's import.meta (scripts/bundle.ts): the URL is made on first use, as node:url's
  // pathToFileURL costs a run that never looks for the addon about a millisecond.
  let url;
  const meta = {
    get url() {
      url ??= require('node:url').pathToFileURL(file).href;
      return url;
    },
  };
  // This file's require: the bundle requires Node's own modules only (scripts/bundle.ts bundles
  // the rest), and node:module's createRequire would load that module and its ES module
  // loader in every run.
  fn.call(module.exports, module.exports, require, module, file, dirname(file), meta);
  return module.exports;
}

module.exports = { compileTool, lessInlining, raiseInterruptBudget, runTool };
