/**
 * One export of an NBD server: the backend it serves and the properties fixed when it is
 * added (name, description, read-only, contexts offered, client limit). Everything a client
 * is told about an export at INFO/GO time is computed here, in one place.
 */
import type { BlockBackend } from '../block/backend.js';
import { type BdrvDirtyBitmap, bdrvDirtyBitmapCheck, bdrvFindDirtyBitmap } from '../block/dirty-bitmap.js';
import { BlockError } from '../block/errors.js';
import type { BlockDriverState } from '../block/node.js';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_MAX_BUFFER_SIZE,
  NBD_MAX_STRING_SIZE,
  NBD_META_ALLOCATION_DEPTH,
  NBD_META_BASE_ALLOCATION,
  NBD_META_DIRTY_BITMAP_PREFIX,
} from './protocol.js';

export interface NbdExportOptions {
  /** Export name clients ask for; '' is the default export. At most 4096 bytes. */
  name: string;
  /**
   * The image, as its user-level handle. Every connection to the export shares it; the server
   * never closes it (the caller does, after NbdServer.close()).
   */
  backend: BlockBackend;
  /** Sent as INFO_DESCRIPTION and in LIST replies (qemu-nbd -D). */
  description?: string;
  /** Refuse writes even if the backend allows them (qemu-nbd -r). */
  readOnly?: boolean;
  /** Offer the `qemu:allocation-depth` context (qemu-nbd -A). */
  allocationDepth?: boolean;
  /**
   * Dirty bitmaps to offer as `qemu:dirty-bitmap:NAME` (qemu-nbd -B), found on the exported
   * node or down its backing chain.
   */
  bitmaps?: string[];
  /**
   * Clients allowed on this export at once (qemu-nbd -e); 0 = unlimited (the default). Any
   * value but 1 advertises CAN_MULTI_CONN: all connections share one backend and its cache.
   */
  maxClients?: number;
}

/** A metadata context an export offers, with the id qemu gives it. */
export interface MetaContext {
  id: number;
  name: string;
  /** The bitmap a `qemu:dirty-bitmap:` context reports. */
  bitmap?: BdrvDirtyBitmap;
}

export const CONTEXT_ID_BASE_ALLOCATION = 0;
export const CONTEXT_ID_ALLOCATION_DEPTH = 1;
/** Bitmap i of the export is context 2 + i (QEMU's NBD_META_ID_DIRTY_BITMAP). */
export const CONTEXT_ID_DIRTY_BITMAP = 2;

/**
 * The bitmaps an export offers (nbd_export_create): each found on the node or below it, usable
 * (not inconsistent), and not enabled on a writable node behind a read-only export, whose
 * clients would then read bits that go on changing.
 */
function exportBitmaps(backend: BlockBackend, names: readonly string[], readOnly: boolean): MetaContext[] {
  return names.map((name, i) => {
    let bs: BlockDriverState | null = backend.root;
    let bm: BdrvDirtyBitmap | null = null;
    for (; bs && !bm; bs = bs.backing) bm = bdrvFindDirtyBitmap(bs, name);
    if (!bm) throw new BlockError('ENOENT', `Bitmap '${name}' is not found`, { op: 'nbd_export' });
    if (readOnly && !backend.readOnly && !bm.readonly && bm.enabled) {
      throw new BlockError('EINVAL', `Enabled bitmap '${name}' incompatible with readonly export`, { op: 'nbd_export' });
    }
    bdrvDirtyBitmapCheck(bm, { write: false });
    return { id: CONTEXT_ID_DIRTY_BITMAP + i, name: NBD_META_DIRTY_BITMAP_PREFIX + name, bitmap: bm };
  });
}

/** Block sizes as qemu-nbd sends them in INFO_BLOCK_SIZE. */
export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

export class NbdExport {
  readonly name: string;
  readonly backend: BlockBackend;
  readonly description: string;
  readonly readOnly: boolean;
  readonly contexts: readonly MetaContext[];
  readonly maxClients: number;
  /** Clients now in transmission on this export. */
  clients = 0;

  constructor(options: NbdExportOptions) {
    const nameBytes = new TextEncoder().encode(options.name).length;
    if (nameBytes > NBD_MAX_STRING_SIZE) {
      throw new BlockError('EINVAL', `export name '${options.name}' too long`, { op: 'nbd_export' });
    }
    const description = options.description ?? '';
    if (new TextEncoder().encode(description).length > NBD_MAX_STRING_SIZE) {
      throw new BlockError('EINVAL', `export description '${description}' too long`, { op: 'nbd_export' });
    }
    const maxClients = options.maxClients ?? 0;
    if (!Number.isSafeInteger(maxClients) || maxClients < 0) {
      throw new BlockError('EINVAL', `Invalid shared device number '${maxClients}'`, { op: 'nbd_export' });
    }
    this.name = options.name;
    this.backend = options.backend;
    this.description = description;
    this.readOnly = (options.readOnly ?? false) || options.backend.readOnly;
    this.maxClients = maxClients;
    const contexts: MetaContext[] = [{ id: CONTEXT_ID_BASE_ALLOCATION, name: NBD_META_BASE_ALLOCATION }];
    if (options.allocationDepth === true) contexts.push({ id: CONTEXT_ID_ALLOCATION_DEPTH, name: NBD_META_ALLOCATION_DEPTH });
    contexts.push(...exportBitmaps(options.backend, options.bitmaps ?? [], this.readOnly));
    this.contexts = contexts;
  }

  /** Export size: the backend's length in whole sectors, as qemu-nbd shows it. */
  async size(): Promise<number> {
    const len = await this.backend.getLength();
    return Math.ceil(len / 512) * 512;
  }

  /** Transmission flags as qemu-nbd 7.2 advertises them; DF only once SR is negotiated. */
  transmissionFlags(structuredReply: boolean): number {
    let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
    if (structuredReply) flags |= NBD_FLAG_SEND_DF;
    if (this.readOnly) flags |= NBD_FLAG_READ_ONLY;
    else flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    // One backend serves every connection, so a flush on one covers writes from all.
    if (this.maxClients !== 1) flags |= NBD_FLAG_CAN_MULTI_CONN;
    return flags;
  }

  /** Minimum 1 unless the client asked (then the request alignment), as qemu-nbd. */
  blockSizes(clientAsked: boolean): BlockSizes {
    const minimum = clientAsked ? (this.backend.root?.requestAlignment ?? 1) : 1;
    return { minimum, preferred: Math.max(4096, minimum), maximum: NBD_MAX_BUFFER_SIZE };
  }

  /** True when a new client may enter transmission on this export. */
  hasRoom(): boolean {
    return this.maxClients === 0 || this.clients < this.maxClients;
  }
}
