#!/usr/bin/env node
// blk-img launcher: the program name in messages is the basename of this script's path
// (process.argv[1]), so a link named otherwise speaks under that name.
//
// libuv's file I/O thread pool, unless the user chose a size: 2 threads, measured (bench/RESULTS.md,
// "The thread pool size"). Page-cached small requests are fastest with few threads (each hand-off to a
// sleeping worker costs a wake-up), but with 1 an fdatasync stalls every other request (COW
// writes over a backing file took twice as long). libuv reads the variable once, when the pool
// starts on first use, and loading an ES module entry already starts it: so this launcher is
// CommonJS (bin/package.json), sets the size, and only then loads the tool.
'use strict';
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '2';
// convert runs its per-chunk code (block status, the read, the target format's write path) a
// few thousand times per GiB, and each call moves up to 2 MiB in the kernel: optimising those
// async functions costs TurboFan more CPU than it saves (a 1 GiB convert spent about 0.2 s of
// user time compiling). Four times V8's default interrupt budget (67584) leaves them in the
// baseline tiers unless they run far more often (bench/RESULTS.md, "Convert"). The
// subcommand is the first argument that is not an option.
const command = process.argv.slice(2).find((a) => !a.startsWith('-'));
const convert = command === 'convert';
// The tool comes as one bundled file (dist/bin, `npm run bundle`): loading the ~60 compiled
// modules one by one took about 40 ms of every run. Without the bundle, the modules themselves.
const { compileTool, runTool } = require('./bundle.js');
// The whole code cache holds convert's and bench's request paths; the others take the lean one
// (scripts/bundle.ts), which V8 deserializes in less time.
const tool = compileTool('img', convert || command === 'bench' ? '' : '.lean');
(tool === null ? import('../dist/src/tools/img/main.js') : Promise.resolve(runTool(tool)))
  .then(({ main }) => {
    // The flag is set once the tool is loaded: V8 takes a code cache (ours, and Node's for its
    // own modules) only under the flags it was made with. A function gets its budget when first
    // called, so the flag still covers convert's.
    if (convert) require('node:v8').setFlagsFromString('--interrupt-budget=270336');
    return main(process.argv);
  })
  .then((code) => {
    process.exitCode = code;
  });
