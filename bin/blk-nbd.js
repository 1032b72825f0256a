#!/usr/bin/env node
// blk-nbd launcher: the program name in messages is the basename of this script's path
// (process.argv[1]). CommonJS for the same reason as blk-img's launcher: the thread pool size
// must be set before any ES module loads.
'use strict';
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '2';
// A copy out of the server runs its request path (decode, block status, read, reply) a few
// thousand times per GiB, each moving up to 32 MiB in the kernel: TurboFan optimising those
// async functions cost more CPU than it saved (nbdcopy of 512 MiB: 0.40 s of the server's
// user time, 0.27 s with this). Four times V8's default interrupt budget, as blk-img bench
// has (convert has eight; bench/RESULTS.md, "NBD"): a long-lived server still optimises what runs far more.
// The bundled tool (dist/bin, `npm run bundle`), else the compiled modules.
const { compileTool, raiseInterruptBudget, runTool } = require('./bundle.js');
const tool = compileTool('nbd');
(tool === null ? import('../dist/src/tools/nbd/nbd.js') : Promise.resolve(runTool(tool)))
  .then(({ main }) => {
    // Once the tool is loaded (raiseInterruptBudget says why).
    raiseInterruptBudget();
    return main(process.argv);
  })
  .then((code) => {
    process.exitCode = code;
  });
