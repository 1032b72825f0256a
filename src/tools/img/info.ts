// blk-img info: image facts as qemu-img info prints them (human or QAPI ImageInfo JSON).
import { bdrvSnapshotList, isBlockError, type BlockDriverState, type ImageInfoSpecific, type ImageInfoValue, type QEMUSnapshotInfo } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { ToolExit, errorMessage } from '../shared/output.js';
import { sizeToStr } from '../shared/printf.js';
import { qemuPathCombine } from './chain.js';
import type { ImgEnv } from './env.js';
import { jsonObject, qdictOrder, toJsonPretty, type JsonObject, type JsonValue } from './json.js';
import { imgOpen } from './open.js';
import { snapshotListText } from './snapshot.js';
import { FORCE_SHARE, FORMAT_LONG, HELP, IMAGE_OPTS, OBJECT, OUTPUT, imgArgs, oneFilename, parseImgOptions, parseOutputFormat, type ImgArgs, type ImgOption } from './options.js';

/** QAPI ImageInfo, the fields QED and raw images can have. */
export interface ImageInfo {
  filename: string;
  format: string;
  dirtyFlag?: boolean;
  actualSize?: number;
  virtualSize: number;
  clusterSize?: number;
  backingFilename?: string;
  fullBackingFilename?: string;
  backingFilenameFormat?: string;
  /** Internal snapshots; absent when there are none. */
  snapshots?: QEMUSnapshotInfo[];
  /** The driver's "Format specific information" (qcow2's compat, refcount bits...). */
  formatSpecific?: ImageInfoSpecific;
}

/** bdrv_query_image_info. */
export async function queryImageInfo(bs: BlockDriverState, filename: string): Promise<ImageInfo> {
  const info: ImageInfo = { filename, format: bs.driver.formatName, virtualSize: await bs.getLength() };
  try {
    info.actualSize = await bs.getAllocatedFileSize();
  } catch {
    // "disk size: unavailable"
  }
  try {
    const bdi = await bs.getInfo();
    if (bdi.clusterSize !== 0) info.clusterSize = bdi.clusterSize;
    info.dirtyFlag = bdi.isDirty;
  } catch (e) {
    // No get_info down to the storage (nbd, http): no dirty flag shown, as qemu-img.
    if (!isBlockError(e, 'ENOTSUP')) throw e;
  }
  const snapshots = await bdrvSnapshotList(bs);
  if (snapshots.length > 0) info.snapshots = snapshots;
  const specific = await bs.driver.getSpecificInfo?.(bs);
  if (specific !== undefined) info.formatSpecific = specific;
  if (bs.backingFile !== '') {
    info.backingFilename = bs.backingFile;
    info.fullBackingFilename = qemuPathCombine(filename, bs.backingFile);
    if (bs.backingFormat !== '') info.backingFilenameFormat = bs.backingFormat;
  }
  return info;
}

/** Format-specific values as JSON: dicts keep their insertion (QAPI) order. */
function infoValueJson(v: ImageInfoValue): JsonValue {
  if (Array.isArray(v)) return v.map(infoValueJson);
  if (typeof v === 'object') return jsonObject(Object.entries(v).map(([k, x]) => [k, infoValueJson(x)]));
  return v;
}

/** dump_qobject (dump_qdict, dump_qlist): nested values one level deeper, '-' in names as ' '. */
function dumpInfoValue(indent: number, entries: Array<[string, ImageInfoValue]>): string {
  let s = '';
  for (const [label, v] of entries) {
    const composite = typeof v === 'object';
    s += `${'    '.repeat(indent)}${label}:${composite ? '\n' : ' '}`;
    if (Array.isArray(v)) s += dumpInfoValue(indent + 1, v.map((x, n) => [`[${n}]`, x]));
    else if (typeof v === 'object') s += dumpInfoDict(indent + 1, v);
    else s += `${String(v)}\n`;
  }
  return s;
}

function dumpInfoDict(indent: number, d: { [key: string]: ImageInfoValue }): string {
  return dumpInfoValue(indent, qdictOrder(Object.entries(d)).map(([k, x]) => [k.replace(/-/g, ' '), x]));
}

export function imageInfoJson(i: ImageInfo): JsonObject {
  // Insertion order = QAPI field order (it only matters within a hash bucket).
  return jsonObject([
    ['filename', i.filename],
    ['format', i.format],
    ['dirty-flag', i.dirtyFlag],
    ['actual-size', i.actualSize],
    ['virtual-size', i.virtualSize],
    ['cluster-size', i.clusterSize],
    ['backing-filename', i.backingFilename],
    ['full-backing-filename', i.fullBackingFilename],
    ['backing-filename-format', i.backingFilenameFormat],
    ['snapshots', i.snapshots?.map(snapshotInfoJson)],
    [
      'format-specific',
      i.formatSpecific && jsonObject([
        ['type', i.formatSpecific.kind],
        ['data', infoValueJson(i.formatSpecific.data)],
      ]),
    ],
  ]);
}

/** bdrv_image_info_dump. */
export function imageInfoHuman(i: ImageInfo): string {
  let s =
    `image: ${i.filename}\n` +
    `file format: ${i.format}\n` +
    `virtual size: ${sizeToStr(i.virtualSize)} (${i.virtualSize} bytes)\n` +
    `disk size: ${i.actualSize === undefined ? 'unavailable' : sizeToStr(i.actualSize)}\n`;
  if (i.clusterSize !== undefined) s += `cluster_size: ${i.clusterSize}\n`;
  if (i.dirtyFlag === true) s += 'cleanly shut down: no\n';
  if (i.backingFilename !== undefined) {
    s += `backing file: ${i.backingFilename}`;
    if (i.fullBackingFilename === undefined) s += ' (cannot determine actual path)';
    else if (i.fullBackingFilename !== i.backingFilename) s += ` (actual path: ${i.fullBackingFilename})`;
    s += '\n';
  }
  if (i.backingFilenameFormat !== undefined) s += `backing file format: ${i.backingFilenameFormat}\n`;
  if (i.snapshots !== undefined) s += snapshotListText(i.snapshots);
  if (i.formatSpecific !== undefined) {
    // bdrv_image_info_specific_dump: QDict order, '-' in names printed as ' '.
    s += 'Format specific information:\n';
    s += dumpInfoDict(1, i.formatSpecific.data);
  }
  return s;
}

/** QAPI SnapshotInfo. */
function snapshotInfoJson(sn: QEMUSnapshotInfo): JsonObject {
  return jsonObject([
    ['id', sn.id],
    ['name', sn.name],
    ['vm-state-size', sn.vmStateSize],
    ['date-sec', sn.dateSec],
    ['date-nsec', sn.dateNsec],
    ['vm-clock-sec', Number(sn.vmClockNsec / 1_000_000_000n)],
    ['vm-clock-nsec', Number(sn.vmClockNsec % 1_000_000_000n)],
    ['icount', sn.icount === null ? undefined : Number(sn.icount)],
  ]);
}

interface InfoArgs extends ImgArgs {
  chain: boolean;
}

const INFO_OPTIONS: readonly ImgOption<InfoArgs>[] = [
  FORMAT_LONG,
  HELP,
  FORCE_SHARE,
  OUTPUT,
  { long: 'backing-chain', set: (s) => void (s.chain = true) },
  OBJECT,
  IMAGE_OPTS,
];

export async function imgInfo(env: ImgEnv, argv: string[]): Promise<number> {
  const args: InfoArgs = { ...imgArgs(), chain: false };
  const first = oneFilename(env, parseImgOptions(env, argv, INFO_OPTIONS, args));
  const output = parseOutputFormat(env, args.output);
  const { chain, forceShare } = args;
  let imageOpts = args.imageOpts;

  // collect_image_info_list: open each image without its backing file and follow the chain.
  const infos: ImageInfo[] = [];
  const seen = new Set<string>();
  let filename: string | undefined = first;
  let curFmt = args.fmt;
  while (filename !== undefined) {
    if (seen.has(filename)) {
      env.o.error(`Backing file '${filename}' creates an infinite loop.`);
      throw new ToolExit(1);
    }
    seen.add(filename);
    const blk = await imgOpen(env, filename, { imageOpts, format: curFmt, readOnly: true, noBacking: true, noIO: true, forceShare });
    let info: ImageInfo;
    try {
      // The node's own name (a json: filename resolved, file: stripped), as QEMU prints it.
      const bs = rootOf(blk);
      info = await queryImageInfo(bs, bs.displayName);
    } catch (e) {
      env.o.error(errorMessage(e));
      throw new ToolExit(1);
    } finally {
      await closeQuietly(blk);
    }
    infos.push(info);
    if (!chain) break;
    filename = info.fullBackingFilename;
    curFmt = info.backingFilenameFormat;
    // Only the first image comes from options; its backing files are named.
    imageOpts = false;
  }

  if (output === 'human') {
    env.o.out(infos.map(imageInfoHuman).join('\n'));
  } else if (chain) {
    env.o.out(`${toJsonPretty(infos.map(imageInfoJson))}\n`);
  } else {
    env.o.out(`${toJsonPretty(imageInfoJson(infos[0]))}\n`);
  }
  return 0;
}
