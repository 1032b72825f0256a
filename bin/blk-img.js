#!/usr/bin/env node
// blk-img launcher: the program name in messages is the basename of this script's path
// (process.argv[1]), so a link named otherwise speaks under that name.
//
// libuv's file I/O thread pool, unless the user chose a size: 2 threads, measured (bench/RESULTS.md,
// "The thread pool size"). Page-cached small requests are fastest with few threads (each hand-off to a
// sleeping worker costs a wake-up), but with 1 an fdatasync stalls every other request (COW
// writes over a backing file took twice as long). libuv reads the variable once, when the pool
// starts on first use, and loading an ES module entry already starts it: so this launcher is
// CommonJS (bin/package.json), sets the size, and only then imports the (ESM) tool.
'use strict';
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '2';
// The tool comes as one bundled file (dist/bin, `npm run bundle`): loading the ~60 compiled
// modules one by one took about 40 ms of every run. Without the bundle, the modules themselves.
import('../dist/bin/img.mjs')
  .catch((e) => {
    if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    return import('../dist/src/tools/img/main.js');
  })
  .then(({ main }) => main(process.argv))
  .then((code) => {
    process.exitCode = code;
  });
