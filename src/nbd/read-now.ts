/**
 * READs answered within the turn that decoded them, when the export can: its block status
 * and its data are at hand without waiting (a raw image on a host file: lseek, and preadv2
 * with RWF_NOWAIT from the page cache; BlockBackend.blockStatusAboveNow and preadNow). Such a
 * READ takes no promise from the backend, the generic layer or the drivers, and no place
 * among the requests in flight unless the socket's buffer is full.
 *
 * Everything else takes the generic path (transmission.ts), which also answers every error:
 * a format or filter in between, a backing chain, a page-cache miss, a range running into the
 * sector tail past the backend's length, FUA (a flush first). The fast path decides before it
 * sends anything: the status of every extent and every data extent's bytes are gathered
 * first, and a decline hands back the frames it took, so the generic path starts afresh.
 * The replies are those of the generic path, chunk for chunk.
 */
import type { NbdConnection } from './connection.js';
import type { NbdExport } from './export.js';
import * as p from './protocol.js';
import { statusNow } from './status.js';

/** Extents one READ may gather here; a more fragmented range takes the generic path. */
const MAX_PIECES = 16;
/**
 * The page cache is asked this much at a time: the file driver copies at most 256 KiB on the
 * loop's thread per request (larger ones go to its I/O engine), and qemu-img reads 2 MiB.
 */
const READ_PIECE = 256 * 1024;

/** Fill `buf` from offset now, a piece at a time; false when any piece is not at hand. */
function preadNow(exp: NbdExport, offset: number, buf: Buffer): boolean {
  for (let pos = 0; pos < buf.length; pos += READ_PIECE) {
    if (!exp.backend.preadNow(offset + pos, buf.subarray(pos, Math.min(buf.length, pos + READ_PIECE)))) return false;
  }
  return true;
}

/** A data piece (its frame filled) or a hole piece (frame null) of a structured READ. */
interface Piece {
  offset: number;
  length: number;
  frame: Buffer | null;
  head: number;
}

/**
 * Serve the validated READ `req` now. Null: declined, nothing sent nor held. Otherwise
 * whether the socket took the reply without exceeding its buffer (false: wait for
 * conn.whenDrained before reading more, as a generic reply does).
 */
export function readNow(
  conn: NbdConnection,
  exp: NbdExport,
  req: p.NbdRequest,
  structured: boolean,
  backendLength: number,
): boolean | null {
  const offset = Number(req.offset);
  const bytes = req.length;
  // FUA flushes first; the sector tail past the backend reads as zeros the generic way.
  if ((req.flags & p.NBD_CMD_FLAG_FUA) !== 0 || bytes === 0 || offset + bytes > backendLength) return null;
  if (structured && (req.flags & p.NBD_CMD_FLAG_DF) === 0) return sparseReadNow(conn, exp, req.cookie, offset, bytes, backendLength);
  const frame = conn.frames.get(bytes);
  const head = p.encodeReadReplyHeaderInto(frame, req.cookie, structured, offset, bytes, true);
  if (!preadNow(exp, offset, frame.subarray(head, head + bytes))) {
    conn.frames.put(frame);
    return null;
  }
  return conn.sendFrameNow(frame, head + bytes);
}

/** sparseRead's chunks (status.ts), each extent's status and data gathered before any is sent. */
function sparseReadNow(conn: NbdConnection, exp: NbdExport, cookie: bigint, offset: number, bytes: number, backendLength: number): boolean | null {
  const pieces: Piece[] = [];
  for (let progress = 0; progress < bytes; ) {
    const at = offset + progress;
    const e = pieces.length < MAX_PIECES ? statusNow(exp.backend, 0, at, bytes - progress, backendLength) : null;
    if (e === null) return decline(conn, pieces);
    progress += e.length;
    if (e.zero) {
      pieces.push({ offset: at, length: e.length, frame: null, head: 0 });
      continue;
    }
    const frame = conn.frames.get(e.length);
    const head = p.encodeReadReplyHeaderInto(frame, cookie, true, at, e.length, progress === bytes);
    pieces.push({ offset: at, length: e.length, frame, head });
    if (!preadNow(exp, at, frame.subarray(head, head + e.length))) return decline(conn, pieces);
  }
  let ok = true;
  for (let i = 0; i < pieces.length; i++) {
    const { offset: at, length, frame, head } = pieces[i];
    let took: boolean;
    if (frame !== null) {
      took = conn.sendFrameNow(frame, head + length);
    } else {
      const c = p.encodeOffsetHoleChunk(cookie, at, length, i === pieces.length - 1);
      took = conn.sendNow(c.header, ...c.payload);
    }
    // Once full, the socket emits 'drain' later even if a later write found room.
    ok &&= took;
  }
  return ok;
}

/** Give the frames taken back to the pool: nothing was sent, the generic path reads afresh. */
function decline(conn: NbdConnection, pieces: readonly Piece[]): null {
  for (const piece of pieces) if (piece.frame !== null) conn.frames.put(piece.frame);
  return null;
}
