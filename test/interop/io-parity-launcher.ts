// Spawnable blk-io for the crash tests (abort must kill a real process): run with
// `node --import tsx test/interop/io-parity-launcher.ts ARGS...`; the program name is "blk-io".
import { main } from '../../src/tools/io/main.js';

process.exitCode = await main([process.argv[0], 'blk-io', ...process.argv.slice(2)]);
