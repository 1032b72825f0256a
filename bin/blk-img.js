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
// convert and bench run their request paths a few thousand times in a fresh process (a 1 GiB
// convert, a 4096-request bench row): a larger V8 interrupt budget leaves those in the
// baseline tiers until they have run that many times as often, which costs less CPU than
// TurboFan optimising them early. Convert, eight times: each call moves up to 2 MiB in the
// kernel, and optimising its async functions spent about 0.2 s of user time per GiB
// (bench/RESULTS.md, "Convert"); with four times, TurboFan still compiled 128 M instructions'
// worth in a GiB's qcow2 -> qcow2 (14 M with eight), and the bench's seven 1 GiB converts
// ran 3258 M instructions under callgrind against 2969 M with eight (six: 3079 M, twelve:
// 3051 M). Bench, four times: in a 4096-request row TurboFan's compiles took the other CPU
// from the io_uring worker; the whole process's CPU fell 30-50 ms (of 130-360), a
// 65536-request row's rose 10-25 ms (bench/RESULTS.md, "A fresh process's request path").
// The subcommand is the first argument that is not an option.
const command = process.argv.slice(2).find((a) => !a.startsWith('-'));
const convert = command === 'convert';
const hot = convert || command === 'bench';
/** An NBD image: a URI (nbd://, nbd+unix://, ...), the nbd: pseudo-protocol, or driver options naming it. */
const NBD_SOURCE = /^nbd[:+]|driver"?\s*[=:]\s*"?nbd\b/;
// The tool comes as one bundled file (dist/bin, `npm run bundle`): loading the ~60 compiled
// modules one by one took about 40 ms of every run. Without the bundle, the modules themselves.
const { compileTool, lessInlining, raiseInterruptBudget, runTool } = require('./bundle.js');
// The whole code cache holds convert's and bench's request paths; the others take the lean one
// (scripts/bundle.ts), which V8 deserializes in less time.
const tool = compileTool('img', hot ? '' : '.lean');
(tool === null ? import('../dist/src/tools/img/main.js') : Promise.resolve(runTool(tool)))
  .then(({ main, exitWhenDone }) => {
    // Node's own modules take their built-in code cache only under the V8 flags it was made
    // with: node:net (and the stream code under it), loaded by the NBD client once the budget
    // below is set, was parsed and compiled anew in every convert out of an NBD export, and its
    // cache made again (about 10 M instructions a run). Loaded first, it takes the cache.
    if (convert && process.argv.some((a) => NBD_SOURCE.test(a))) require('node:net');
    // Once the tool is loaded (raiseInterruptBudget says why).
    if (hot) raiseInterruptBudget(convert ? 8 : 4);
    if (command === 'map') lessInlining();
    return main(process.argv).then(exitWhenDone);
  });
