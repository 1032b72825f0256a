#!/usr/bin/env node
// blk-img launcher: the program name in messages is the basename of this script's path
// (process.argv[1]), so a link named otherwise speaks under that name.
import { main } from '../dist/src/tools/img.js';

process.exitCode = await main(process.argv);
