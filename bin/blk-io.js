#!/usr/bin/env node
// blk-io launcher: the compiled tool does the work; its exit status becomes ours.
import { main } from '../dist/src/tools/io.js';

process.exitCode = await main(process.argv);
