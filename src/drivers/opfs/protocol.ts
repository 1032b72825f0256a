/**
 * Messages between the opfs driver (any thread) and its worker (a dedicated worker, the only
 * place where the Origin Private File System hands out synchronous access handles). One request,
 * one reply, matched by `id`; buffers are transferred, not copied. No node: imports.
 */
export type OpfsRequest =
  | { id: number; op: 'open'; name: string; create: boolean; truncate: boolean }
  | { id: number; op: 'read'; name: string; offset: number; bytes: number }
  | { id: number; op: 'write'; name: string; offset: number; data: Uint8Array }
  | { id: number; op: 'truncate'; name: string; size: number }
  | { id: number; op: 'flush'; name: string }
  | { id: number; op: 'close'; name: string }
  | { id: number; op: 'remove'; name: string };

export type OpfsReply =
  | { id: number; ok: true; size: number; data?: Uint8Array }
  | { id: number; ok: false; code: string; message: string };

/** What the driver needs of a Worker (or a MessagePort): the structural part it uses. */
export interface OpfsPort {
  postMessage(message: OpfsRequest, transfer: ArrayBuffer[]): void;
  addEventListener(type: 'message', listener: (ev: { data: OpfsReply }) => void): void;
}

/** A file name inside the origin's private directory: one path component, no separators. */
export function opfsValidName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\\');
}
