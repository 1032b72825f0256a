/**
 * The opfs driver's worker: owns one FileSystemSyncAccessHandle per open file of the origin's
 * private directory and serves the driver's requests on it, one at a time (the handle's
 * methods are synchronous). Start it as a module worker:
 *   new Worker(new URL('opfs-worker.js', import.meta.url), { type: 'module' })
 * A sync access handle locks its file: a second open of the same name shares the handle, and
 * the last close releases it.
 */
/// <reference lib="webworker" />
import type { OpfsReply, OpfsRequest } from './protocol.js';
import { opfsValidName } from './protocol.js';

declare const self: DedicatedWorkerGlobalScope;

interface Open {
  handle: FileSystemSyncAccessHandle;
  refs: number;
}

const files = new Map<string, Open>();

function fail(id: number, code: string, message: string): OpfsReply {
  return { id, ok: false, code, message };
}

/** DOMException names as errno codes the block layer knows. */
function errnoOf(e: unknown): string {
  const name = e instanceof DOMException ? e.name : '';
  if (name === 'NotFoundError') return 'ENOENT';
  if (name === 'NoModificationAllowedError') return 'EBUSY';
  if (name === 'QuotaExceededError') return 'ENOSPC';
  if (name === 'NotAllowedError' || name === 'SecurityError') return 'EACCES';
  return 'EIO';
}

async function serve(r: OpfsRequest): Promise<[OpfsReply, ArrayBuffer[]]> {
  if (!opfsValidName(r.name)) return [fail(r.id, 'EINVAL', `invalid OPFS file name '${r.name}'`), []];
  const f = files.get(r.name);
  switch (r.op) {
    case 'open': {
      if (f) {
        if (r.truncate) f.handle.truncate(0);
        f.refs++;
        return [{ id: r.id, ok: true, size: f.handle.getSize() }, []];
      }
      const dir = await navigator.storage.getDirectory();
      const fh = await dir.getFileHandle(r.name, { create: r.create });
      const handle = await fh.createSyncAccessHandle();
      if (r.truncate) handle.truncate(0);
      files.set(r.name, { handle, refs: 1 });
      return [{ id: r.id, ok: true, size: handle.getSize() }, []];
    }
    case 'remove': {
      if (f) return [fail(r.id, 'EBUSY', `'${r.name}' is open`), []];
      const dir = await navigator.storage.getDirectory();
      await dir.removeEntry(r.name);
      return [{ id: r.id, ok: true, size: 0 }, []];
    }
    default:
      break;
  }
  if (!f) return [fail(r.id, 'EBADF', `'${r.name}' is not open`), []];
  const h = f.handle;
  switch (r.op) {
    case 'read': {
      const data = new Uint8Array(r.bytes);
      let got = 0;
      while (got < r.bytes) {
        const n = h.read(data.subarray(got), { at: r.offset + got });
        if (n === 0) break; // past EOF: the rest stays zero
        got += n;
      }
      return [{ id: r.id, ok: true, size: h.getSize(), data }, [data.buffer]];
    }
    case 'write': {
      let done = 0;
      while (done < r.data.length) done += h.write(r.data.subarray(done), { at: r.offset + done });
      return [{ id: r.id, ok: true, size: h.getSize() }, []];
    }
    case 'truncate':
      h.truncate(r.size);
      return [{ id: r.id, ok: true, size: h.getSize() }, []];
    case 'flush':
      h.flush();
      return [{ id: r.id, ok: true, size: h.getSize() }, []];
    case 'close':
      if (--f.refs === 0) {
        h.flush();
        h.close();
        files.delete(r.name);
      }
      return [{ id: r.id, ok: true, size: 0 }, []];
  }
}

// One request at a time, in arrival order: the driver relies on a write issued before a flush
// being on the handle before that flush runs.
let queue: Promise<void> = Promise.resolve();
self.addEventListener('message', (ev: MessageEvent<OpfsRequest>) => {
  const r = ev.data;
  queue = queue.then(async () => {
    let reply: [OpfsReply, ArrayBuffer[]];
    try {
      reply = await serve(r);
    } catch (e) {
      reply = [fail(r.id, errnoOf(e), e instanceof Error ? e.message : String(e)), []];
    }
    self.postMessage(reply[0], reply[1]);
  });
});
