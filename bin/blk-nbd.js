#!/usr/bin/env node
// blk-nbd launcher: the program name in messages is the basename of this script's path
// (process.argv[1]). CommonJS for the same reason as blk-img's launcher: the thread pool size
// must be set before any ES module loads.
'use strict';
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '2';
// The bundled tool (dist/bin, `npm run bundle`), else the compiled modules.
import('../dist/bin/nbd.mjs')
  .catch((e) => {
    if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    return import('../dist/src/tools/nbd/nbd.js');
  })
  .then(({ main }) => main(process.argv))
  .then((code) => {
    process.exitCode = code;
  });
