import { describe, expect, it } from 'vitest';
import { requireQemu } from '../interop/qemu.js';
import { propQemuInterop, propQemuWrites } from './interop-props.js';

const qemu = requireQemu();

describe.skipIf(!qemu)('QED after random sequences, as qemu-img 7.2 sees it', () => {
  it('qemu-img compare finds the model bytes and qemu-img check finds nothing', async () => {
    let commands = 0;
    await propQemuInterop({ numRuns: 60, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(40);
  });
});

describe.skipIf(!qemu)('QED written by qemu-io 7.2, read here', () => {
  it('random qemu-io write / write -z / truncate sequences read back and check clean', async () => {
    let commands = 0;
    await propQemuWrites({ numRuns: 40, onCommands: (n) => (commands += n) });
    expect(commands).toBeGreaterThan(40);
  });
});
