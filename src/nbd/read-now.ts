/**
 * READs answered within the turn that decoded them, when the export can: its block status
 * and its data are at hand without waiting (a raw image on a host file: lseek, and preadv2
 * with RWF_NOWAIT from the page cache; BlockBackend.blockStatusAboveNow and preadNow). Such a
 * READ takes no promise from the backend, the generic layer or the drivers, and no place
 * among the requests in flight unless its reply is left queued on the socket.
 *
 * A READ of one data range of a read-only export goes further when the socket has nothing
 * queued: its reply leaves straight from the host file's page cache (sendfile, the
 * BlockBackend.sendfileNow hook), with no copy of ours; for a copy out of blk-nbd that is
 * one copy of every byte fewer, on the only thread.
 *
 * Everything else takes the generic path (transmission.ts), which also answers every error:
 * a format or filter in between, a backing chain, a page-cache miss, a range running into the
 * sector tail past the backend's length, FUA (a flush first). The fast path decides before it
 * sends anything: the status of every extent and every data extent's bytes are gathered
 * first, and a decline hands back the frames it took, so the generic path starts afresh.
 * The replies are those of the generic path, chunk for chunk.
 */
import { SENDFILE_BROKEN, SENDFILE_DECLINED } from '../block/driver.js';
import type { NbdConnection } from './connection.js';
import type { NbdExport } from './export.js';
import { FRAME_HEADROOM } from './frames.js';
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
 * Serve the validated READ `req` now. False: declined, nothing sent nor held. True: the
 * reply was sent and the kernel took it whole. A promise: the reply is queued on the socket,
 * and the READ's buffers are held until it resolves (written), as a generic reply's are.
 */
export function readNow(
  conn: NbdConnection,
  exp: NbdExport,
  req: p.NbdRequest,
  structured: boolean,
  backendLength: number,
): boolean | Promise<void> {
  const offset = Number(req.offset);
  const bytes = req.length;
  // FUA flushes first; the sector tail past the backend reads as zeros the generic way.
  if ((req.flags & p.NBD_CMD_FLAG_FUA) !== 0 || bytes === 0 || offset + bytes > backendLength) return false;
  if (structured && (req.flags & p.NBD_CMD_FLAG_DF) === 0) return sparseReadNow(conn, exp, req.cookie, offset, bytes, backendLength);
  const direct = sendfileNow(conn, exp, req.cookie, structured, offset, bytes);
  if (direct !== false) return direct;
  const frame = conn.frames.get(bytes);
  const head = p.encodeReadReplyHeaderInto(frame, req.cookie, structured, offset, bytes, true);
  if (!preadNow(exp, offset, frame.subarray(head, head + bytes))) {
    conn.frames.put(frame);
    return false;
  }
  return conn.sendFrameNow(frame, head + bytes) ?? true;
}

/** sparseRead's chunks (status.ts), each extent's status and data gathered before any is sent. */
function sparseReadNow(
  conn: NbdConnection,
  exp: NbdExport,
  cookie: bigint,
  offset: number,
  bytes: number,
  backendLength: number,
): boolean | Promise<void> {
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
    if (e.length === bytes) {
      // One data extent: one OFFSET_DATA chunk, sent from the file when it can be.
      const direct = sendfileNow(conn, exp, cookie, true, offset, bytes);
      if (direct !== false) return direct;
    }
    const frame = conn.frames.get(e.length);
    const head = p.encodeReadReplyHeaderInto(frame, cookie, true, at, e.length, progress === bytes);
    pieces.push({ offset: at, length: e.length, frame, head });
    if (!preadNow(exp, at, frame.subarray(head, head + e.length))) return decline(conn, pieces);
  }
  // The socket writes in order: once the last chunk is written, every chunk before it is.
  let last: Promise<void> | null = null;
  for (let i = 0; i < pieces.length; i++) {
    const { offset: at, length, frame, head } = pieces[i];
    if (frame !== null) {
      last = conn.sendFrameNow(frame, head + length);
    } else {
      const c = p.encodeOffsetHoleChunk(cookie, at, length, i === pieces.length - 1);
      last = conn.sendNow(c.header, ...c.payload);
    }
  }
  return last ?? true;
}

/**
 * The socket send buffer asked for once a connection sends from the file: it then holds
 * page references, not copies, and at the default (about 208 KiB on Linux) a 256 KiB reply
 * never fits, so that each one was cut short, its rest copied, and the client woken twice.
 * The kernel caps it at net.core.wmem_max.
 */
const DIRECT_SEND_BUFFER = 4 * 1024 * 1024;

/** The reply header of sendfileNow: encoded and sent within one call. */
const directHead = Buffer.alloc(FRAME_HEADROOM);

/**
 * The reply to a READ of one data range, its header then the bytes straight from the host
 * file into the socket (sendfile: no copy of ours), when the socket has nothing queued. Only
 * for a read-only export: the socket holds the page-cache pages themselves until the client
 * reads them, and no write of ours may change them meanwhile. The part the socket did not
 * take is queued from a frame. False: declined, nothing sent.
 */
function sendfileNow(conn: NbdConnection, exp: NbdExport, cookie: bigint, structured: boolean, offset: number, bytes: number): boolean | Promise<void> {
  const sock = exp.readOnly ? conn.directFd() : -1;
  if (sock < 0) return false;
  const spill = conn.frames.get(bytes);
  const n = p.encodeReadReplyHeaderInto(directHead, cookie, structured, offset, bytes, true);
  // The first reply sent so asks for a larger send buffer (see DIRECT_SEND_BUFFER).
  const sendBuffer = conn.direct ? 0 : DIRECT_SEND_BUFFER;
  const rest = exp.backend.sendfileNow(offset, bytes, { sock, head: directHead.subarray(0, n), spill, sendBuffer });
  if (rest !== SENDFILE_DECLINED) conn.direct = true;
  if (rest > 0) return conn.sendFrameNow(spill, rest) ?? true;
  conn.frames.put(spill);
  if (rest === SENDFILE_DECLINED) return false;
  // Part of the reply went out and the rest could not be read: the stream is out of step.
  if (rest === SENDFILE_BROKEN) conn.destroy();
  return true;
}

/** Give the frames taken back to the pool: nothing was sent, the generic path reads afresh. */
function decline(conn: NbdConnection, pieces: readonly Piece[]): false {
  for (const piece of pieces) if (piece.frame !== null) conn.frames.put(piece.frame);
  return false;
}
