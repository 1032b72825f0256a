/**
 * A bounded pool of concurrent tasks within one request (QEMU's block/aio_task.c): a driver
 * splits a request into pieces that may run at once, up to `maxBusy` at a time, and waits for
 * all of them before it answers. The first failure is kept; the pieces after it are not
 * started, those already running are still waited for (they fill the caller's buffers).
 */
export class AioTaskPool {
  private readonly busy = new Set<Promise<void>>();
  private error: unknown = undefined;
  private failed = false;

  constructor(private readonly maxBusy: number) {}

  /** False once a task has failed: the caller stops adding (aio_task_pool_status). */
  get ok(): boolean {
    return !this.failed;
  }

  /** Start `task` once a slot is free (aio_task_pool_start_task). */
  async start(task: () => Promise<void>): Promise<void> {
    while (this.busy.size >= this.maxBusy) await Promise.race(this.busy);
    if (this.failed) return;
    const p: Promise<void> = task()
      .catch((e: unknown) => {
        if (!this.failed) {
          this.failed = true;
          this.error = e;
        }
      })
      .finally(() => this.busy.delete(p));
    this.busy.add(p);
  }

  /** Wait for every task, then throw the first failure (aio_task_pool_wait_all). */
  async waitAll(): Promise<void> {
    while (this.busy.size > 0) await Promise.race(this.busy);
    if (this.failed) throw this.error;
  }
}
