import { describe, expect, it } from 'vitest';
import { parseBlkdebugConfig } from '../../src/drivers/blkdebug/config.js';
import { BlkdebugState, setBlkdebugMessageSink } from '../../src/drivers/blkdebug/state.js';
import { BlockError } from '../../src/block/errors.js';

describe('blkdebug config parser', () => {
  it('parses inject-error and set-state groups with QEMU defaults', () => {
    const rules = parseBlkdebugConfig(`
# a comment
[set-state]
event = "l2_update"
state = "1"
new_state = "2"

[inject-error]
event = "l2_update"
errno = "28"
once = "on"
sector = "8"
state = "2"

[inject-error]
event = "write_aio"
`);
    expect(rules).toHaveLength(3);
    // inject-error rules first, in file order, then set-state (QEMU's add order)
    expect(rules[0]).toMatchObject({
      action: 'inject-error',
      event: 'l2_update',
      code: 'ENOSPC',
      errno: 28,
      once: true,
      immediately: false,
      offset: 4096,
      state: 2,
    });
    expect(rules[1]).toMatchObject({ action: 'inject-error', event: 'write_aio', code: 'EIO', once: false, offset: -1, state: 0 });
    expect(rules[2]).toMatchObject({ action: 'set-state', event: 'l2_update', state: 1, newState: 2 });
  });

  it('reads numbers as qemu_strtou64 with base 0 does (hex, octal, leading blanks)', () => {
    const rules = parseBlkdebugConfig('[inject-error "r1"]\nevent = "read_aio"\nerrno = "034"\nsector = "0x10"\nstate = " 1"\n');
    expect(rules[0]).toMatchObject({ errno: 28, code: 'ENOSPC', offset: 16 * 512, state: 1 });
  });

  it('words errors as qemu-io prints them: no file name or line, the file kept as the path', () => {
    let err: unknown;
    try {
      parseBlkdebugConfig('[inject-error]\nerrno = "5"\n', 'rules.cfg');
    } catch (e) {
      err = e;
    }
    expect((err as BlockError).message).toBe('Missing event name for rule');
    expect((err as BlockError).path).toBe('rules.cfg');
  });

  it('accepts the iotype option', () => {
    const rules = parseBlkdebugConfig('[inject-error]\nevent = "l2_alloc_write"\niotype = "flush"\nimmediately = "yes"\n');
    expect(rules[0]).toMatchObject({ event: 'l2_alloc_write', immediately: true });
    expect(rules[0].action === 'inject-error' && [...rules[0].iotypes]).toEqual(['flush']);
  });

  it.each([
    ['[inject-error]\nerrno = "5"\n', /Missing event name/],
    ['[inject-error]\nevent = "no_such_event"\n', /^invalid parameter value: no_such_event$/],
    ['[bogus]\nevent = "l1_update"\n', /no option group 'bogus'/],
    ['[inject-error]\nevent = "l1_update"\ncolour = "red"\n', /Invalid parameter 'colour'/],
    ['[inject-error]\nevent = "l1_update"\nerrno = "five"\n', /expects a number/],
    ['[inject-error]\nevent = "l1_update"\nonce = "maybe"\n', /expects 'on' or 'off'/],
    ['event = "l1_update"\n', /no group defined/],
    // An unquoted value reads as empty (QEMU's sscanf patterns).
    ['[inject-error]\nevent = l1_update\n', /^invalid parameter value: $/],
    // QEMU 7.2 knows only the underscore spelling of event names.
    ['[inject-error]\nevent = "l2_alloc.write"\n', /^invalid parameter value: l2_alloc.write$/],
    ['[inject-error]\nevent = "l1_update"\nerrno = "-18446744073709551616"\n', /^Value '-18446744073709551616' is too large for parameter 'errno'$/],
    ['[inject-error]\nevent = "l1_update"\nsector = "0x10000000000000000"\n', /^Value '0x10000000000000000' is too large for parameter 'sector'$/],
    ['[inject-error]\nevent = "l1_update"\nerrno = "- 5"\n', /^Parameter 'errno' expects a number$/],
    ['[inject-error]\nevent = "l1_update"\niotype = "sideways"\n', /^invalid parameter value: sideways$/],
    ['[inject-error]\nevent="l1_update"\n', /^Invalid parameter 'event="l1_update"'$/],
    ['[inject-error]\ngarbage\n', /^Invalid parameter 'garbage'$/],
    ['  # not a comment\n', /^no group defined$/],
    ['[inject-error "1x"]\nevent = "l1_update"\n', /^Parameter 'id' expects an identifier\nIdentifiers consist/],
    ['[inject-error "a"]\nevent = "l1_update"\n[inject-error "a"]\nevent = "l1_update"\n', /^Duplicate ID 'a' for inject-error$/],
    // Every line is read before any rule is built, and inject-error rules are built first.
    ['[inject-error]\nevent = "nosuch"\n[inject-error]\nerrno = "x"\n', /^Parameter 'errno' expects a number$/],
    ['[set-state]\nnew_state = "2"\n[inject-error]\nevent = "nosuch"\n', /^invalid parameter value: nosuch$/],
  ])('rejects malformed config %#', (text, msg) => {
    let err: unknown;
    try {
      parseBlkdebugConfig(text);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BlockError);
    expect((err as BlockError).code).toBe('EINVAL');
    expect((err as BlockError).message).toMatch(msg);
  });
});

describe('blkdebug numbers, read as QEMU does (u64, then truncated to the field type)', () => {
  const one = (body: string) => {
    const r = parseBlkdebugConfig(`[inject-error]\nevent = "l1_update"\n${body}`)[0];
    if (r.action !== 'inject-error') throw new Error('not an inject-error rule');
    return r;
  };
  it('keeps any errno, with its strerror text', () => {
    expect(one('errno = "8"\n')).toMatchObject({ errno: 8, code: 'EIO', errnoText: 'Exec format error' });
    expect(one('errno = "4000"\n')).toMatchObject({ errno: 4000, errnoText: 'Unknown error 4000' });
    expect(one('errno = "28"\n')).toMatchObject({ errno: 28, code: 'ENOSPC' });
  });
  it('wraps negative and over-wide numbers', () => {
    expect(one('errno = "-5"\n').errno).toBe(-5);
    expect(one('errno = " -0x5"\n').errno).toBe(-5);
    expect(one('errno = "4294967301"\n')).toMatchObject({ errno: 5, code: 'EIO' });
    expect(one('errno = "-18446744073709551615"\n')).toMatchObject({ errno: 1, code: 'EPERM' });
    expect(one('state = "-1"\n').state).toBe(-1);
    expect(one('sector = "-1"\n').offset).toBe(-1);
    expect(one('sector = "18446744073709551615"\n').offset).toBe(-1);
    expect(one('sector = "-2"\n').offset).toBe(Number.POSITIVE_INFINITY);
    expect(one('sector = "36028797018963969"\n').offset).toBe(512);
    const ss = parseBlkdebugConfig('[set-state]\nevent = "l1_update"\nnew_state = "4294967298"\n')[0];
    expect(ss).toMatchObject({ newState: 2 });
  });
  it('a negative errno makes the request succeed untouched', async () => {
    const s = new BlkdebugState(parseBlkdebugConfig('[inject-error]\nevent = "l1_update"\nerrno = "-5"\n'));
    await s.debugEvent('l1_update');
    expect(s.ruleCheck(0, 512, 'read', 'read')).toEqual({ error: null, immediately: false });
  });
});

describe('blkdebug rule engine', () => {
  it('arms an error at the event and fails every later matching request until re-armed', async () => {
    const s = new BlkdebugState(parseBlkdebugConfig('[inject-error]\nevent = "l2_update"\nerrno = "5"\n'));
    expect(s.ruleCheck(0, 512, 'write', 'write')).toBeNull();
    await s.debugEvent('l2_update');
    const hit = s.ruleCheck(0, 512, 'write', 'write');
    expect(hit?.error?.code).toBe('EIO');
    expect(hit?.immediately).toBe(false);
    // not once: stays armed
    expect(s.ruleCheck(4096, 512, 'read', 'read')?.error?.code).toBe('EIO');
    // block-status is not in the default iotype mask
    expect(s.ruleCheck(0, 512, 'block-status', 'block_status')).toBeNull();
  });

  it('a once rule fails one request and is gone', async () => {
    const s = new BlkdebugState(parseBlkdebugConfig('[inject-error]\nevent = "write_aio"\nonce = "on"\n'));
    await s.debugEvent('write_aio');
    expect(s.ruleCheck(0, 512, 'write', 'write')).not.toBeNull();
    expect(s.ruleCheck(0, 512, 'write', 'write')).toBeNull();
    await s.debugEvent('write_aio');
    expect(s.ruleCheck(0, 512, 'write', 'write')).toBeNull();
    expect(s.rulesFor('write_aio')).toHaveLength(0);
  });

  it('sector restricts the error to requests covering that sector; flushes never match it', async () => {
    const s = new BlkdebugState(parseBlkdebugConfig('[inject-error]\nevent = "read_aio"\nsector = "10"\n'));
    await s.debugEvent('read_aio');
    expect(s.ruleCheck(0, 5120, 'read', 'read')).toBeNull();
    expect(s.ruleCheck(5120, 512, 'read', 'read')).not.toBeNull();
    expect(s.ruleCheck(4096, 2048, 'read', 'read')).not.toBeNull();
    expect(s.ruleCheck(0, 0, 'flush', 'flush')).toBeNull();
  });

  it('state machine: rules see the old state, set-state applies after the event', async () => {
    const s = new BlkdebugState(
      parseBlkdebugConfig(`
[set-state]
event = "l2_update"
state = "1"
new_state = "2"
[inject-error]
event = "l2_update"
state = "2"
errno = "28"
`),
    );
    await s.debugEvent('l2_update');
    expect(s.state).toBe(2);
    expect(s.ruleCheck(0, 512, 'write', 'write')).toBeNull();
    await s.debugEvent('l2_update');
    expect(s.ruleCheck(0, 512, 'write', 'write')?.error?.code).toBe('ENOSPC');
  });

  it('a new injecting event replaces the armed set; events without inject rules keep it', async () => {
    const s = new BlkdebugState(
      parseBlkdebugConfig(
        '[inject-error]\nevent = "l1_update"\nerrno = "5"\n[inject-error]\nevent = "l2_update"\nerrno = "28"\n',
      ),
    );
    await s.debugEvent('l1_update');
    await s.debugEvent('read_aio');
    expect(s.ruleCheck(0, 512, 'write', 'write')?.error?.code).toBe('EIO');
    await s.debugEvent('l2_update');
    expect(s.ruleCheck(0, 512, 'write', 'write')?.error?.code).toBe('ENOSPC');
  });

  it('errno 0 arms nothing that fails', async () => {
    const s = new BlkdebugState(parseBlkdebugConfig('[inject-error]\nevent = "l1_update"\nerrno = "0"\n'));
    await s.debugEvent('l1_update');
    expect(s.ruleCheck(0, 512, 'write', 'write')).toBeNull();
  });

  it('breakpoints suspend the request at the event until resumed, one-shot', async () => {
    const lines: string[] = [];
    setBlkdebugMessageSink((l) => lines.push(l));
    try {
      const s = new BlkdebugState();
      s.addBreakpoint('l2_update', 'A');
      let done = false;
      const p = s.debugEvent('l2_update').then(() => {
        done = true;
      });
      await Promise.resolve();
      expect(s.isSuspended('A')).toBe(true);
      expect(done).toBe(false);
      expect(s.resume('B')).toBe(false);
      expect(s.resume('A')).toBe(true);
      await p;
      expect(done).toBe(true);
      expect(s.isSuspended('A')).toBe(false);
      // one-shot: the next event passes
      await s.debugEvent('l2_update');
      expect(lines).toEqual(["blkdebug: Suspended request 'A'", "blkdebug: Resuming request 'A'"]);
    } finally {
      setBlkdebugMessageSink(null);
    }
  });

  it('remove_break drops pending breakpoints and wakes suspended requests', async () => {
    const s = new BlkdebugState();
    expect(s.removeBreakpoint('X')).toBe(false);
    s.addBreakpoint('write_aio', 'X');
    s.addBreakpoint('write_aio', 'X');
    const p1 = s.debugEvent('write_aio');
    await Promise.resolve();
    expect(s.isSuspended('X')).toBe(true);
    expect(s.removeBreakpoint('X')).toBe(true);
    await p1;
    expect(s.isSuspended('X')).toBe(false);
    expect(s.rulesFor('write_aio')).toHaveLength(0);
  });
});
