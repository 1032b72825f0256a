// The tools' real command cores in the page: blk-io's parser and commands on one IoSession that
// owns the page's image, and blk-img's dispatcher, both writing into the page's console.
import type { BlockBackend, BlockDriverState } from '../../src/browser.js';
import { imgMain } from '../../src/tools/img/cli.js';
import { closeImage, openfile } from '../../src/tools/io/cmd-open.js';
import { breakline, qemuioCommand } from '../../src/tools/io/commands.js';
import { IoSession, defaultOpenFlags } from '../../src/tools/io/session.js';
import { ToolOutput, type ToolIO } from '../../src/tools/shared/output.js';

export class PageTools {
  readonly s: IoSession;
  private readonly io: ToolIO;

  constructor(print: (text: string, stream: 'out' | 'err') => void) {
    this.io = { stdout: { write: (t: string) => print(t, 'out') }, stderr: { write: (t: string) => print(t, 'err') }, stdoutIsTTY: true };
    this.s = new IoSession(new ToolOutput(this.io, 'blk-io'), {
      abort: () => print('abort: the page has no process to kill\n', 'err'),
      raise: () => undefined,
    });
  }

  get blk(): BlockBackend | null {
    return this.s.blk;
  }

  get root(): BlockDriverState | null {
    return this.s.blk?.root ?? null;
  }

  async open(name: string): Promise<boolean> {
    const ok = await openfile(this.s, name, defaultOpenFlags());
    this.s.o.flush();
    return ok;
  }

  async close(): Promise<void> {
    await closeImage(this.s);
  }

  /** One console line: `blk-img ARGS` runs blk-img, anything else is a blk-io command. */
  async run(line: string): Promise<number> {
    const words = breakline(line);
    if (words[0] === 'blk-img') return imgMain(['blk-img', ...words], this.io);
    const r = await qemuioCommand(this.s, line);
    this.s.o.flush();
    return r;
  }
}
