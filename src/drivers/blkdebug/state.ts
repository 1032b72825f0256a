/**
 * The rule engine of blkdebug (QEMU 7.2 semantics), apart from any I/O:
 *
 * - a debug event runs every rule registered for it whose `state` matches (0 = any state);
 * - an inject-error rule that fires becomes *active*; the first event of a batch that activates
 *   one clears the previously active rules, so the active set is "what the last injecting event
 *   armed". Active rules stay armed for every following request (unless `once`) until the next
 *   injecting event replaces them;
 * - each request on the node then looks for the first active rule covering its range and type,
 *   and fails with that rule's error;
 * - set-state rules change the state after all the event's rules ran (rules see the old state);
 * - a breakpoint is a one-shot suspend rule: the request that announces its event is parked
 *   until `resume(tag)` (or `removeBreakpoint(tag)`).
 */
import { debugMessage } from '../../block/debug.js';
import { BlockError } from '../../block/errors.js';
import type { BlkDebugEvent } from '../../block/events.js';
import type { BlkdebugIOType, BlkdebugRule, InjectErrorRule } from './config.js';

// "Suspended request" / "Resuming request" go where the block layer's debug messages go
// (QEMU prints them to stdout; blk-io sets the sink).
export { setDebugMessageSink as setBlkdebugMessageSink } from '../../block/debug.js';

interface SuspendedRequest {
  tag: string;
  wake: () => void;
}

export interface InjectedError {
  /** null: a negative errno, the request then succeeds without doing any I/O (QEMU returns -errno > 0). */
  error: BlockError | null;
  immediately: boolean;
}

export class BlkdebugState {
  /** QEMU starts in state 1; rules with state 0 match any state. */
  state = 1;
  /** Per event, newest rule first (QEMU inserts at the list head). */
  private readonly rules = new Map<BlkDebugEvent, BlkdebugRule[]>();
  private activeRules: InjectErrorRule[] = [];
  /** Newest first, as QEMU's list. */
  private readonly suspended: SuspendedRequest[] = [];
  /** Counters, so tests can see that rules fired. */
  eventsSeen = 0;
  errorsInjected = 0;

  constructor(rules: readonly BlkdebugRule[] = []) {
    for (const r of rules) this.addRule(r);
  }

  addRule(rule: BlkdebugRule): void {
    const list = this.rules.get(rule.event) ?? [];
    list.unshift(rule);
    this.rules.set(rule.event, list);
  }

  private removeRule(rule: BlkdebugRule): void {
    const list = this.rules.get(rule.event);
    if (!list) return;
    const i = list.indexOf(rule);
    if (i >= 0) list.splice(i, 1);
  }

  /** Rules currently registered for `event` (for tests and introspection). */
  rulesFor(event: BlkDebugEvent): readonly BlkdebugRule[] {
    return this.rules.get(event) ?? [];
  }

  get active(): readonly InjectErrorRule[] {
    return this.activeRules;
  }

  /** The debugEvent hook: run the event's rules, then park at any breakpoint it hit. */
  async debugEvent(event: BlkDebugEvent): Promise<void> {
    this.eventsSeen++;
    const list = this.rules.get(event);
    if (!list || list.length === 0) return;
    let newState = this.state;
    let injected = false;
    const suspendTags: string[] = [];
    for (const rule of [...list]) {
      if (rule.state !== 0 && rule.state !== this.state) continue;
      switch (rule.action) {
        case 'inject-error':
          if (!injected) {
            this.activeRules = [];
            injected = true;
          }
          this.activeRules.unshift(rule);
          break;
        case 'set-state':
          newState = rule.newState;
          break;
        case 'suspend':
          // Breakpoints are one-shot: the rule goes away when a request hits it.
          this.removeRule(rule);
          suspendTags.push(rule.tag);
          break;
      }
    }
    this.state = newState;
    // Every hit breakpoint is registered before the request parks, so that remove_break or
    // resume can find all of them (QEMU queues them while processing and yields afterwards).
    const parked = suspendTags.map((tag) => this.suspend(tag));
    for (const p of parked) await p;
  }

  private suspend(tag: string): Promise<void> {
    let wake: () => void = () => undefined;
    const p = new Promise<void>((resolve) => {
      wake = resolve;
    });
    this.suspended.unshift({ tag, wake });
    debugMessage(`blkdebug: Suspended request '${tag}'`);
    return p;
  }

  /**
   * QEMU's rule_check: the error the next request of this type and range must fail with, or
   * null. A `once` rule is consumed here.
   */
  ruleCheck(offset: number, bytes: number, iotype: BlkdebugIOType, op: string): InjectedError | null {
    const rule = this.activeRules.find(
      (r) =>
        (r.offset === -1 || (bytes > 0 && r.offset >= offset && r.offset < offset + bytes)) && r.iotypes.has(iotype),
    );
    if (!rule || rule.errno === 0) return null;
    if (rule.once) {
      this.activeRules.splice(this.activeRules.indexOf(rule), 1);
      this.removeRule(rule);
    }
    this.errorsInjected++;
    const error =
      rule.errno < 0
        ? null
        : new BlockError(rule.code, `blkdebug: injected errno ${rule.errno} (${rule.errnoText}) at event ${rule.event}`, {
            op,
            offset,
            errno: rule.errno,
            errnoText: rule.errnoText,
          });
    return { error, immediately: rule.immediately };
  }

  /** Drop every armed error (tests: end an injection window without a new event). */
  disarm(): void {
    this.activeRules = [];
  }

  /** bdrv_debug_breakpoint: park the next request that announces `event`. */
  addBreakpoint(event: BlkDebugEvent, tag: string): void {
    this.addRule({ action: 'suspend', event, state: 0, tag });
  }

  /** bdrv_debug_resume: wake the most recently suspended request with `tag`; false if none. */
  resume(tag: string): boolean {
    const i = this.suspended.findIndex((r) => r.tag === tag);
    if (i < 0) return false;
    const [r] = this.suspended.splice(i, 1);
    debugMessage(`blkdebug: Resuming request '${r.tag}'`);
    r.wake();
    return true;
  }

  /** bdrv_debug_remove_breakpoint: drop the tag's breakpoints and wake its requests. */
  removeBreakpoint(tag: string): boolean {
    let found = false;
    for (const list of this.rules.values()) {
      for (const rule of [...list]) {
        if (rule.action === 'suspend' && rule.tag === tag) {
          list.splice(list.indexOf(rule), 1);
          found = true;
        }
      }
    }
    while (this.resume(tag)) found = true;
    return found;
  }

  isSuspended(tag: string): boolean {
    return this.suspended.some((r) => r.tag === tag);
  }

  /** Wake everything (close must not leave requests parked forever). */
  resumeAll(): void {
    while (this.suspended.length > 0) this.resume(this.suspended[0].tag);
  }
}
