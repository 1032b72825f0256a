// Spawnable blk-nbd for the interop tests (a server must be a real process): run with
// `node --import tsx test/interop/nbd-cli-launcher.ts ARGS...`; the program name is "qemu-nbd"
// so that messages compare with the real qemu-nbd's as they are.
import { main } from '../../src/tools/nbd/nbd.js';

process.exitCode = await main([process.argv[0], 'qemu-nbd', ...process.argv.slice(2)]);
