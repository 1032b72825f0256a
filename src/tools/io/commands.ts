// blk-io's command table (qemu-io 7.2's, sorted by name) and qemuio_command, which runs one
// command line: argument counts, open image and write permission are checked here, the rest
// by each command (argument checks, option letters, messages and exit values of qemu-io).
import { COMMAND_HELP } from './help.js';
import type { IoSession } from './session.js';
import { EINVAL, type CmdInfo } from './command.js';
import { aioFlushF, aioReadCmd, aioWriteCmd } from './cmd-aio.js';
import { breakF, removeBreakF, resumeF, waitBreakF } from './cmd-debug.js';
import { allocF, discardCmd, flushF, infoF, lengthF, mapF, truncateCmd } from './cmd-image.js';
import { abortF, quitF, sigraiseF, sleepF } from './cmd-misc.js';
import { closeF, openCmd } from './cmd-open.js';
import { readCmd, readvCmd } from './cmd-read.js';
import { reopenCmd } from './cmd-reopen.js';
import { writeCmd, writevCmd } from './cmd-write.js';

function helpOneline(name: string, ct: CmdInfo): string {
  // The name as asked for ("help r" prints "r ..."); altnames are not listed in "help".
  let line = `${name} `;
  if (ct.args !== null) line += `${ct.args} `;
  return `${line}-- ${ct.oneline}\n`;
}

async function helpF(s: IoSession, argv: string[]): Promise<number> {
  if (argv.length === 1) {
    for (const ct of COMMANDS) s.o.out(helpOneline(ct.name, ct));
    s.o.out("\nUse 'help commandname' for extended help.\n");
    return 0;
  }
  const ct = findCommand(argv[1]);
  if (ct === undefined) {
    s.o.out(`command ${argv[1]} not found\n`);
    return EINVAL;
  }
  s.o.out(helpOneline(argv[1], ct));
  const h = COMMAND_HELP[ct.name];
  if (h !== undefined) s.o.out(h);
  return 0;
}

export const COMMANDS: readonly CmdInfo[] = [
  { name: 'abort', cfunc: abortF, argmin: 0, argmax: 0, nofile: true, args: null, oneline: 'simulate a program crash using abort(3)' },
  { name: 'aio_flush', cfunc: aioFlushF, argmin: 0, argmax: 0, args: null, oneline: 'completes all outstanding aio requests' },
  aioReadCmd,
  aioWriteCmd,
  { name: 'alloc', cfunc: allocF, argmin: 1, argmax: 2, args: 'offset [count]', oneline: 'checks if offset is allocated in the file' },
  { name: 'break', cfunc: breakF, argmin: 2, argmax: 2, args: 'event tag', oneline: 'sets a breakpoint on event and tags the stopped request as tag' },
  { name: 'close', cfunc: closeF, argmin: 0, argmax: 0, args: null, oneline: 'close the current open file' },
  discardCmd,
  { name: 'flush', cfunc: flushF, argmin: 0, argmax: 0, args: null, oneline: 'flush all in-core file state to disk' },
  { name: 'help', altname: '?', cfunc: helpF, argmin: 0, argmax: 1, nofile: true, args: '[command]', oneline: 'help for one or all commands' },
  { name: 'info', cfunc: infoF, argmin: 0, argmax: 0, args: null, oneline: 'prints information about the current file' },
  { name: 'length', cfunc: lengthF, argmin: 0, argmax: 0, args: null, oneline: 'gets the length of the current file' },
  { name: 'map', cfunc: mapF, argmin: 0, argmax: 0, args: '', oneline: 'prints the allocated areas of a file' },
  openCmd,
  { name: 'quit', altname: 'q', cfunc: quitF, argmin: 0, argmax: -1, nofile: true, args: null, oneline: 'exit the program' },
  readCmd,
  readvCmd,
  { name: 'remove_break', cfunc: removeBreakF, argmin: 1, argmax: 1, args: 'tag', oneline: 'remove a breakpoint by tag' },
  reopenCmd,
  { name: 'resume', cfunc: resumeF, argmin: 1, argmax: 1, args: 'tag', oneline: 'resumes the request tagged as tag' },
  { name: 'sigraise', cfunc: sigraiseF, argmin: 1, argmax: 1, nofile: true, args: 'signal', oneline: 'raises a signal' },
  { name: 'sleep', cfunc: sleepF, argmin: 1, argmax: 1, nofile: true, args: null, oneline: 'waits for the given value in milliseconds' },
  truncateCmd,
  { name: 'wait_break', cfunc: waitBreakF, argmin: 1, argmax: 1, args: 'tag', oneline: 'waits for the suspension of a request' },
  writeCmd,
  writevCmd,
];

export function findCommand(name: string): CmdInfo | undefined {
  return COMMANDS.find((c) => c.name === name || c.altname === name);
}

/** breakline: words separated by single spaces; empty words are dropped (tabs are not spaces). */
export function breakline(input: string): string[] {
  return input.split(' ').filter((w) => w !== '');
}

/** qemuio_command: run one command line; the return value is < 0 on failure. */
export async function qemuioCommand(s: IoSession, line: string): Promise<number> {
  const argv = breakline(line);
  if (argv.length === 0) return 0;
  const ct = findCommand(argv[0]);
  if (ct === undefined) {
    s.o.errRaw(`command "${argv[0]}" not found\n`);
    return EINVAL;
  }
  if (!ct.nofile && s.blk === null) {
    s.o.errRaw("no file open, try 'help open'\n");
    return EINVAL;
  }
  const n = argv.length - 1;
  if (n < ct.argmin || (ct.argmax !== -1 && n > ct.argmax)) {
    let msg: string;
    if (ct.argmax === -1) msg = `bad argument count ${n} to ${argv[0]}, expected at least ${ct.argmin} arguments`;
    else if (ct.argmin === ct.argmax) msg = `bad argument count ${n} to ${argv[0]}, expected ${ct.argmin} arguments`;
    else msg = `bad argument count ${n} to ${argv[0]}, expected between ${ct.argmin} and ${ct.argmax} arguments`;
    s.o.errRaw(`${msg}\n`);
    return EINVAL;
  }
  // Write permission is taken before the command runs (blk_set_perm), so a read-only image
  // refuses a write command before any of its own checks.
  if (ct.write && s.blk?.readOnly === true) {
    s.o.error('Block node is read-only');
    return -13;
  }
  if (ct.write) s.blkWritePerm = true;
  return ct.cfunc(s, argv);
}
