// blk-nbd -L: list another server's exports, printed exactly as qemu-nbd -L prints them.
import { connectSocket } from '../../drivers/nbd/connect.js';
import type { NbdServerAddress } from '../../drivers/nbd/config.js';
import { nbdReceiveExportList, type NbdListedExport } from '../../drivers/nbd/list.js';
import { OptionChannel } from '../../drivers/nbd/options.js';
import { nbdClientTls } from '../../drivers/nbd/tls.js';
import { NBD_FLAG_HAS_FLAGS, nbdFlagNames } from '../../nbd/protocol.js';
import { SocketReader } from '../../nbd/reader.js';
import { errorMessage, type ToolOutput } from '../common.js';
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
    const tls = opts.tlsCreds === undefined ? undefined : nbdClientTls(opts.tlsCreds, opts.tlsHostname ?? opts.bind);
    const sock = await connectSocket(addr);
    const ch = new OptionChannel(sock, new SocketReader(sock));
    try {
      list = await nbdReceiveExportList(ch, tls);
    } finally {
      // The courtesy ABORT goes out before the socket closes.
      await new Promise<void>((resolve) => ch.sock.end(resolve));
      ch.sock.destroy();
      sock.destroy();
    }
  } catch (e) {
    o.error(errorMessage(e));
    return 1;
  }
  o.out(formatExportList(list));
  return 0;
}
