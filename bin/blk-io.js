#!/usr/bin/env node
// blk-io launcher: the compiled tool does the work; its exit status becomes ours.
//
// libuv's file I/O thread pool, unless the user chose a size: 2 threads, measured (bench/RESULTS.md,
// "The thread pool size"). Page-cached small requests are fastest with few threads (each hand-off to a
// sleeping worker costs a wake-up), but with 1 an fdatasync stalls every other request (COW
// writes over a backing file took twice as long). libuv reads the variable once, when the pool
// starts on first use, and loading an ES module entry already starts it: so this launcher is
// CommonJS (bin/package.json), sets the size, and only then loads the tool.
'use strict';
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '2';
// The tool comes as one bundled file (dist/bin, `npm run bundle`): loading the ~60 compiled
// modules one by one took about 40 ms of every run. Without the bundle, the modules themselves.
const { compileTool, runTool } = require('./bundle.js');
const tool = compileTool('io');
(tool === null ? import('../dist/src/tools/io/main.js') : Promise.resolve(runTool(tool)))
  .then(({ main }) => main(process.argv))
  .then((code) => {
    process.exitCode = code;
  });
