/**
 * What a node is (the fields of QEMU's struct BlockDriverState): its identity and children
 * (set at open, changed only by changeBackingFile and reopen), `requests` (io/requests.ts),
 * the write generations (io/flush.ts), and who uses the node (`parent`: a parent node, a
 * BlockBackend, or the caller of `open` itself, which decides whether it grows and how it
 * counts its length; io/length.ts says why a bare node needs the last). What a node does,
 * its requests and operations, is BlockDriverState in node.ts, which extends this.
 */
import { realClock, type Clock } from './clock.js';
import type { BdrvDirtyBitmap } from './dirty-bitmap.js';
import type { BlockDriver, OpenOptions } from './driver.js';
import { BlockEventEmitter } from './events.js';
import { nodeGrowable, userLengthInSectors, type NodeParent } from './io/length.js';
import { RequestTracker, driverRequestAlignment } from './io/requests.js';
import type { BlockDriverState } from './node.js';
import { BlockDriverRegistry, driverIO, getDefaultRegistry } from './registry.js';

export class NodeState {
  readonly driver: BlockDriver;
  /** The name the node was opened with (full filename, filter prefixes included). */
  filename: string;
  /**
   * The canonical name a driver gives its node once open (bdrv_refresh_filename's
   * exact_filename), e.g. nbd's `nbd+unix://?socket=P`; null keeps `filename`.
   */
  exactFilename: string | null = null;
  /** Driver state. */
  opaque: unknown = null;
  /** Protocol child of a format node (or the image child of a filter). */
  file: BlockDriverState | null = null;
  /** The opened backing node (read-only). */
  backing: BlockDriverState | null = null;
  /**
   * A format's external data child (QEMU's `data-file` child, role DATA): guest data lives
   * there, metadata in `file`. The driver opens it (bdrvOpenChild); drain, reopen and close
   * treat it like `file`.
   */
  dataFile: BlockDriverState | null = null;
  /** Backing file name as recorded in the image, '' if none. */
  backingFile = '';
  /** Backing format recorded in the image, '' if none. */
  backingFormat = '';
  /** backingFile resolved against the image's directory. */
  fullBackingFilename = '';
  readOnly: boolean;
  readonly openOptions: OpenOptions;
  readonly clock: Clock;
  readonly events = new BlockEventEmitter();
  /**
   * Alignment the generic layer pads requests to. Set from the driver at construction; a
   * protocol driver whose limit comes from the other end may raise it in its open hook (an NBD
   * server's minimum block size), as QEMU's refresh_limits sets bl.request_alignment.
   */
  requestAlignment: number;
  readonly depth: number;
  readonly registry: BlockDriverRegistry;

  // State of the generic layer (src/block only; drivers do not touch it).
  /** In-flight count and tracked requests (io/requests.ts). */
  readonly requests = new RequestTracker();
  /** The driver's hooks, bound once per node (a `.bind` per request is garbage). */
  readonly io: ReturnType<typeof driverIO>;
  /**
   * Writes that ended on this node (QEMU's write_gen) and the count the last successful flush
   * saw (flushed_gen): a flush announces flush_to_disk only if they differ (io/flush.ts).
   */
  writeGen = 0;
  flushedGen = 0;
  /** Flushes of this node now at their flush_to_disk step (see flushToDiskDue). */
  flushingToDisk = 0;
  /** Dirty bitmaps over this node (dirty-bitmap.ts); a format may load and store them. */
  dirtyBitmaps: BdrvDirtyBitmap[] = [];

  /** The driver's getLength hook, bound once (lengthNow asks it per request). */
  protected readonly getLengthHook: ((bs: BlockDriverState) => number | Promise<number>) | null;
  /** Set by BlockDriverState's driverOpen and close. */
  protected closing: Promise<void> | null = null;
  protected opened = false;
  protected parent: NodeParent;
  /**
   * True from a successful open until close() begins. A field kept by driverOpen and close,
   * not a getter: every request's checks read it, on two nodes for a format over a file, and
   * a getter is a call each time in V8's baseline tier. Not to be set by anyone else.
   */
  isOpen = false;
  /**
   * Does a write past the end grow the node (a protocol or filter with a user; io/length.ts)?
   * Kept by the constructor and setParent (the driver never changes), a field for the reason
   * isOpen is. Not to be set by anyone else.
   */
  growable: boolean;
  /**
   * Does the user see the driver's length in whole sectors (io/length.ts)? Kept with
   * `growable`, for the same reason: the backend's bounds ask it on every request.
   */
  userSectors: boolean;

  /**
   * A bare node; `open` is the normal way to get one. Drivers that build nodes by hand call
   * `driverOpen` afterwards.
   */
  constructor(driver: BlockDriver, filename: string, options: OpenOptions = {}) {
    this.driver = driver;
    this.filename = filename;
    this.openOptions = options;
    this.readOnly = options.readOnly ?? false;
    this.clock = options.clock ?? realClock;
    this.depth = options.depth ?? 0;
    this.registry = options.registry ?? getDefaultRegistry();
    this.parent = options.child === true ? 'node' : 'none';
    this.growable = nodeGrowable(driver, this.parent);
    this.userSectors = userLengthInSectors(driver, this.parent);
    this.requestAlignment = driverRequestAlignment(driver);
    this.io = driverIO(driver);
    this.getLengthHook = driver.getLength?.bind(driver) ?? null;
  }

  /**
   * The name QEMU shows for the node (bs->filename after bdrv_refresh_filename): the driver's
   * canonical name, else, for a node named after its file, the file's shown name.
   */
  get displayName(): string {
    if (this.exactFilename !== null) return this.exactFilename;
    if (this.file !== null && this.file.filename === this.filename) return this.file.displayName;
    return this.filename;
  }

  // ---------------------------------------------------------------------------------------
  // Who uses the node (its length follows from it: BlockDriverState's userLength)

  /**
   * Set who uses the node (a BlockBackend attaching it as its root sets 'backend': the
   * backend bounds requests, the node may grow). Returns the previous value, for detach.
   */
  setParent(parent: NodeParent): NodeParent {
    const prev = this.parent;
    this.parent = parent;
    this.growable = nodeGrowable(this.driver, parent);
    this.userSectors = userLengthInSectors(this.driver, parent);
    return prev;
  }

  /** Copy-on-read applies to this node's reads (qemu-io -C on a writable node). */
  get copyOnReadActive(): boolean {
    return this.openOptions.copyOnRead === true && !this.readOnly;
  }
}
