// blk-io's commands that need no image: quit, sleep, abort, sigraise (qemu-io 7.2).
import { strtolFull } from './format.js';
import type { IoSession } from './session.js';
import { EINVAL, OptFail, parseNum } from './command.js';

export async function quitF(s: IoSession): Promise<number> {
  s.quit = true;
  return 0;
}

export async function sleepF(s: IoSession, argv: string[]): Promise<number> {
  const ms = strtolFull(argv[1]);
  if (ms === null || ms < 0) {
    s.o.out(`${argv[1]} is not a valid number\n`);
    return EINVAL;
  }
  await new Promise<void>((resolve) => setTimeout(resolve, Math.min(ms, 2 ** 31 - 1)));
  s.poll();
  return 0;
}

export async function abortF(s: IoSession): Promise<number> {
  s.hooks.abort();
  return 0;
}

/** NSIG on Linux. */
const NSIG = 65;

export async function sigraiseF(s: IoSession, argv: string[]): Promise<number> {
  const sig = parseNum(s, argv[1]);
  if (sig instanceof OptFail) return sig.ret;
  if (sig > NSIG) {
    s.o.out(`signal argument '${argv[1]}' is too large to be a valid signal\n`);
    return EINVAL;
  }
  // raise() does not flush stdio: qemu-io flushes both streams first.
  s.o.flush();
  s.hooks.raise(sig);
  return 0;
}
