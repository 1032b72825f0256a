// blk-io's breakpoint commands (qemu-io 7.2): break, remove_break, resume, wait_break, on the
// image's stack through the block layer's breakpoint calls (a blkdebug node answers them).
import { errnoText, type IoSession } from './session.js';
import { EINVAL, imageNode } from './command.js';

export async function breakF(s: IoSession, argv: string[]): Promise<number> {
  try {
    imageNode(s).debugBreakpoint(argv[1], argv[2]);
    return 0;
  } catch (e) {
    s.o.out(`Could not set breakpoint: ${errnoText(e)}\n`);
    return EINVAL;
  }
}

export async function removeBreakF(s: IoSession, argv: string[]): Promise<number> {
  try {
    imageNode(s).debugRemoveBreakpoint(argv[1]);
    return 0;
  } catch (e) {
    s.o.out(`Could not remove breakpoint ${argv[1]}: ${errnoText(e)}\n`);
    return EINVAL;
  }
}

export async function resumeF(s: IoSession, argv: string[]): Promise<number> {
  try {
    imageNode(s).debugResume(argv[1]);
    // The resumed request runs on until it waits for I/O (QEMU enters its coroutine directly).
    await new Promise<void>((resolve) => setImmediate(resolve));
    return 0;
  } catch (e) {
    s.o.out(`Could not resume request: ${errnoText(e)}\n`);
    return EINVAL;
  }
}

export async function waitBreakF(s: IoSession, argv: string[]): Promise<number> {
  const bs = imageNode(s);
  try {
    // qemu-io polls forever; without a blkdebug node nothing can ever stop, so say so.
    while (!bs.debugIsSuspended(argv[1])) {
      await new Promise<void>((resolve) => setTimeout(resolve, 1));
    }
  } catch (e) {
    s.o.out(`Could not wait for breakpoint: ${errnoText(e)}\n`);
    return EINVAL;
  }
  s.poll();
  return 0;
}
