// The progress meter of -p (util/qemu-progress.c): single-precision float state, printed as
// "    (%3.2f/100%)\r" whenever it moved by more than the command's minimum step.
import { formatFixed } from '../shared/printf.js';
import type { ToolOutput } from '../shared/output.js';

export class Progress {
  private current = 0;
  private lastPrint = 0;
  constructor(
    private readonly o: ToolOutput,
    private readonly enabled: boolean,
    private readonly minSkip: number,
  ) {}

  /** delta is a fraction of max (percent) unless max is 0, then an absolute value. */
  print(delta: number, max: number): void {
    const f = Math.fround;
    let current = max === 0 ? f(delta) : f(this.current + f(f(delta / 100) * max));
    if (current > 100) current = 100;
    this.current = current;
    if (
      current > f(this.lastPrint + this.minSkip) ||
      current < f(this.lastPrint - this.minSkip) ||
      current === 0 ||
      current === 100
    ) {
      this.lastPrint = this.current;
      if (this.enabled) {
        this.o.out(`    (${formatFixed(this.current, 2).padStart(3)}/100%)\r`);
        this.o.flush();
      }
    }
  }

  end(): void {
    if (this.enabled) this.o.out('\n');
  }
}
