import { BlockAIOCB, aioToPromise, genericAioPool, type CompletionFunc } from './aio.js';
import type { BlockDriver, WriteFlags } from './driver.js';
import { BDRV_SECTOR_SIZE } from './driver.js';
import { BlockError } from './errors.js';
import type { IOVector } from './iovec.js';
import type { BlockDriverState } from './node.js';
import { protocolPrefix } from './path.js';

/** Bytes handed to probe(): QEMU's BLOCK_PROBE_BUF_SIZE. */
export const BLOCK_PROBE_BUF_SIZE = 2048;

export type CoReadvFn = (bs: BlockDriverState, offset: number, bytes: number, qiov: IOVector) => Promise<void>;
export type CoWritevFn = (
  bs: BlockDriverState,
  offset: number,
  bytes: number,
  qiov: IOVector,
  flags: WriteFlags,
) => Promise<void>;
export type AioRwFn = (
  bs: BlockDriverState,
  sectorNum: number,
  qiov: IOVector,
  nbSectors: number,
  cb: CompletionFunc,
) => BlockAIOCB;

/** A driver's read/write entry points in both styles: native where it has them, adapters elsewhere. */
export interface DriverIO {
  coPreadv?: CoReadvFn;
  coPwritev?: CoWritevFn;
  aioReadv?: AioRwFn;
  aioWritev?: AioRwFn;
  /** The driver's own AIO hooks only (no generic fallback): the AIO fast path's. */
  nativeAioReadv?: AioRwFn;
  nativeAioWritev?: AioRwFn;
}

const ioCache = new WeakMap<BlockDriver, DriverIO>();

function sectorsOf(offset: number, bytes: number, op: string): { sectorNum: number; nbSectors: number } {
  // The aio hooks speak sectors; the generic layer never hands an aio-only driver anything
  // unaligned because such drivers have requestAlignment >= 512.
  if (offset % BDRV_SECTOR_SIZE !== 0 || bytes % BDRV_SECTOR_SIZE !== 0) {
    throw new BlockError('EINVAL', `${op}: request ${offset}+${bytes} is not sector aligned`, { op, offset });
  }
  return { sectorNum: offset / BDRV_SECTOR_SIZE, nbSectors: bytes / BDRV_SECTOR_SIZE };
}

/**
 * Fill in the missing style of read/write for a driver, without touching the driver object:
 * coroutine-only drivers get AIO through the generic AIOCB pool, AIO-only drivers get
 * coroutine hooks by awaiting the callback.
 */
export function driverIO(drv: BlockDriver): DriverIO {
  const cached = ioCache.get(drv);
  if (cached) return cached;
  const io: DriverIO = {};

  const nativeCoR = drv.coPreadv?.bind(drv);
  const nativeCoW = drv.coPwritev?.bind(drv);
  const nativeAioR = drv.aioReadv?.bind(drv);
  const nativeAioW = drv.aioWritev?.bind(drv);

  if (nativeCoR) io.coPreadv = nativeCoR;
  else if (nativeAioR) {
    io.coPreadv = async (bs, offset, bytes, qiov) => {
      const { sectorNum, nbSectors } = sectorsOf(offset, bytes, 'read');
      await aioToPromise((cb) => nativeAioR(bs, sectorNum, qiov, nbSectors, cb));
    };
  }
  if (nativeCoW) io.coPwritev = nativeCoW;
  else if (nativeAioW) {
    // FUA has no place in the sector aio interface: a flush after the write gives durability.
    io.coPwritev = async (bs, offset, bytes, qiov, flags) => {
      const { sectorNum, nbSectors } = sectorsOf(offset, bytes, 'write');
      await aioToPromise((cb) => nativeAioW(bs, sectorNum, qiov, nbSectors, cb));
      // The driver's own flush, not bs.flush(): the node may already be closing while this
      // write drains.
      if (flags.fua) {
        if (drv.coFlush) await drv.coFlush(bs);
        else if (bs.file) await bs.file.flush();
      }
    };
  }

  io.nativeAioReadv = nativeAioR;
  io.nativeAioWritev = nativeAioW;
  if (nativeAioR) io.aioReadv = nativeAioR;
  else if (nativeCoR) {
    io.aioReadv = (bs, sectorNum, qiov, nbSectors, cb) =>
      genericAioPool
        .get(bs, cb)
        .start(() => nativeCoR(bs, sectorNum * BDRV_SECTOR_SIZE, nbSectors * BDRV_SECTOR_SIZE, qiov));
  }
  if (nativeAioW) io.aioWritev = nativeAioW;
  else if (nativeCoW) {
    io.aioWritev = (bs, sectorNum, qiov, nbSectors, cb) =>
      genericAioPool
        .get(bs, cb)
        .start(() => nativeCoW(bs, sectorNum * BDRV_SECTOR_SIZE, nbSectors * BDRV_SECTOR_SIZE, qiov, {}));
  }

  ioCache.set(drv, io);
  return io;
}

/** The set of known drivers (QEMU's bdrv_drivers list), with lookup by name, protocol and probe. */
export class BlockDriverRegistry {
  private readonly drivers: BlockDriver[] = [];

  /** Add a driver; registering the same name again replaces the earlier one. */
  register(driver: BlockDriver): this {
    const i = this.drivers.findIndex((d) => d.formatName === driver.formatName);
    if (i >= 0) this.drivers.splice(i, 1);
    this.drivers.push(driver);
    return this;
  }

  find(name: string): BlockDriver | undefined {
    return this.drivers.find((d) => d.formatName === name);
  }

  /** Like find, but an unknown name is an error ("Unknown driver 'x'"). */
  require(name: string): BlockDriver {
    const drv = this.find(name);
    if (!drv) throw new BlockError('EINVAL', `Unknown driver '${name}'`, { op: 'open' });
    return drv;
  }

  /** Drivers in registration order (format lists, `-o help`). */
  list(): readonly BlockDriver[] {
    return [...this.drivers];
  }

  /**
   * The driver that handles `filename` (bdrv_find_protocol): the one whose protocolName is
   * the name's prefix (`mem:disk0`), else the host-file driver named 'file'. As in QEMU, a
   * prefix is a colon before any slash, and one no driver claims is an error: `a:b.qed` is
   * "Unknown protocol 'a'" (`file:a:b.qed` or `./a:b.qed` name that file).
   */
  findProtocol(filename: string): BlockDriver {
    const proto = protocolPrefix(filename);
    if (proto !== null) {
      const d = this.drivers.find((x) => x.protocolName === proto || x.protocolAliases?.includes(proto) === true);
      if (d) return d;
      throw new BlockError('EINVAL', `Unknown protocol '${proto}'`, { op: 'open', path: filename });
    }
    const file = this.find('file');
    if (!file) {
      throw new BlockError('ENOTSUP', `No protocol driver for '${filename}' (no 'file' driver registered)`, {
        op: 'open',
        path: filename,
      });
    }
    return file;
  }

  /**
   * Guess the format from the first bytes (bdrv_probe): the highest score wins, ties go to the
   * driver registered last, and nobody claiming the image (every score 0) is an error.
   */
  probe(buf: Uint8Array, filename: string): BlockDriver {
    const head = buf.length > BLOCK_PROBE_BUF_SIZE ? buf.subarray(0, BLOCK_PROBE_BUF_SIZE) : buf;
    let best: BlockDriver | undefined;
    let bestScore = 0;
    for (const d of this.drivers) {
      if (!d.probe) continue;
      const score = d.probe(head, filename);
      // >= so that a later registration wins a tie.
      if (score > 0 && score >= bestScore) {
        best = d;
        bestScore = score;
      }
    }
    if (!best) {
      throw new BlockError('EMEDIUMTYPE', 'Could not determine image format', { op: 'probe', path: filename });
    }
    return best;
  }
}

let defaultRegistry: BlockDriverRegistry | null = null;

/** Installed by the package entry (src/index.ts) with every built-in driver. */
export function setDefaultRegistry(registry: BlockDriverRegistry): void {
  defaultRegistry = registry;
}

export function getDefaultRegistry(): BlockDriverRegistry {
  if (!defaultRegistry) {
    throw new BlockError(
      'EINVAL',
      "No block driver registry: import the package entry ('blocklayer') or pass options.registry",
    );
  }
  return defaultRegistry;
}
