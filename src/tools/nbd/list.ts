// blk-nbd -L: list another server's exports, printed exactly as qemu-nbd -L prints them.
import { NBD_FLAG_HAS_FLAGS, findTlsCreds, nbdFlagNames, nbdListExports, type NbdListedExport, type NbdServerAddress } from '../../index.js';
import { errorMessage, type ToolOutput } from '../shared/output.js';
import type { NbdToolOptions } from './options.js';

/** The listing as qemu_nbd_client_list prints it. */
export function formatExportList(list: readonly NbdListedExport[]): string {
  let out = `exports available: ${list.length}\n`;
  for (const e of list) {
    out += ` export: '${e.name}'\n`;
    if (e.description !== '') out += `  description: ${e.description}\n`;
    if ((e.flags & NBD_FLAG_HAS_FLAGS) !== 0) {
      const names = nbdFlagNames(e.flags);
      out += `  size:  ${e.size}\n  flags: 0x${e.flags.toString(16)} (${names === '' ? '' : ` ${names}`} )\n`;
    }
    if (e.minBlock !== 0) out += `  min block: ${e.minBlock}\n  opt block: ${e.optBlock}\n  max block: ${e.maxBlock}\n`;
    if (e.contexts.length > 0) {
      out += `  available meta contexts: ${e.contexts.length}\n`;
      for (const c of e.contexts) out += `   ${c}\n`;
    }
  }
  return out;
}

/** -L: connect, list, print; 0 on success, 1 with qemu-nbd's message otherwise. */
export async function listExports(o: ToolOutput, opts: NbdToolOptions): Promise<number> {
  const addr: NbdServerAddress =
    opts.socket !== undefined
      ? { type: 'unix', path: opts.socket }
      : { type: 'inet', host: opts.bind ?? '0.0.0.0', port: opts.port ?? '10809' };
  let list: NbdListedExport[];
  try {
    const creds = opts.tlsCreds === undefined ? undefined : findTlsCreds(opts.objects, opts.tlsCreds, 'client');
    list = await nbdListExports(addr, creds, opts.tlsHostname ?? opts.bind);
  } catch (e) {
    o.error(errorMessage(e));
    return 1;
  }
  o.out(formatExportList(list));
  return 0;
}
