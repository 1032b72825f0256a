// blk-img snapshot: list, create, apply and delete internal snapshots through the driver
// hooks (qemu-img's img_snapshot), and the snapshot table dump info shares.
import { bdrvSnapshotCreate, bdrvSnapshotDelete, bdrvSnapshotFind, bdrvSnapshotGoto, bdrvSnapshotList, isBlockError, type QEMUSnapshotInfo } from '../../index.js';
import { closeQuietly, rootOf } from '../shared/open.js';
import { errnoMessage, errorExit, errorMessage } from '../shared/output.js';
import { sizeToStr } from '../shared/printf.js';
import type { ImgEnv } from './env.js';
import { imgOpen } from './open.js';
import { FORCE_SHARE, HELP, IMAGE_OPTS, OBJECT, QUIET, parseImgOptions, type ImgOption } from './options.js';

const pad = (n: number): string => String(n).padStart(2, '0');

/** bdrv_snapshot_dump: the column header (no snapshot) or one row, without the newline. */
export function snapshotDump(sn: QEMUSnapshotInfo | null): string {
  if (sn === null) return `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`;
  // The date in local time, as strftime after localtime_r.
  const d = new Date(sn.dateSec * 1000);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const secs = sn.vmClockNsec / 1_000_000_000n;
  const ms = (sn.vmClockNsec / 1_000_000n) % 1000n;
  const clock = `${String(secs / 3600n).padStart(2, '0')}:${pad(Number((secs / 60n) % 60n))}:${pad(Number(secs % 60n))}.${String(ms).padStart(3, '0')}`;
  const icount = sn.icount === null ? '' : String(sn.icount);
  return `${sn.id.padEnd(9)} ${sn.name.padEnd(16)} ${sizeToStr(sn.vmStateSize).padStart(8)}${date.padStart(20)}${clock.padStart(13)}${icount.padStart(11)}`;
}

/** The "Snapshot list:" block of `snapshot -l` and `info`; empty without snapshots. */
export function snapshotListText(list: readonly QEMUSnapshotInfo[]): string {
  if (list.length === 0) return '';
  return `Snapshot list:\n${snapshotDump(null)}\n${list.map((sn) => `${snapshotDump(sn)}\n`).join('')}`;
}

type Action = 'list' | 'apply' | 'create' | 'delete';

interface SnapshotArgs {
  quiet: boolean;
  forceShare: boolean;
  imageOpts: boolean;
  action: Action | null;
  name: string;
}

const action = (short: string, a: Action): ImgOption<SnapshotArgs> => ({
  short,
  arg: a === 'list' ? 0 : 1,
  set: (s, arg, env) => {
    if (s.action !== null) errorExit(env.o, "Cannot mix '-l', '-a', '-c', '-d'");
    s.action = a;
    s.name = arg;
  },
});

const SNAPSHOT_OPTIONS: readonly ImgOption<SnapshotArgs>[] = [
  HELP,
  action('l', 'list'),
  action('a', 'apply'),
  action('c', 'create'),
  action('d', 'delete'),
  QUIET,
  FORCE_SHARE,
  OBJECT,
  IMAGE_OPTS,
];

export async function imgSnapshot(env: ImgEnv, argv: string[]): Promise<number> {
  const args: SnapshotArgs = { quiet: false, forceShare: false, imageOpts: false, action: null, name: '' };
  const rest = parseImgOptions(env, argv, SNAPSHOT_OPTIONS, args);
  if (rest.length !== 1) errorExit(env.o, 'Expecting one image file name');
  const { name } = args;
  // qemu-img 7.2's snapshot takes no -f: the format is probed. Listing needs no write
  // access; everything else (and no action at all) opens read-write.
  const blk = await imgOpen(env, rest[0], { imageOpts: args.imageOpts, readOnly: args.action === 'list', forceShare: args.forceShare });
  let status = 0;
  try {
    const bs = rootOf(blk);
    switch (args.action) {
      case 'list':
        env.o.out(snapshotListText(await bdrvSnapshotList(bs)));
        break;
      case 'create': {
        const now = Date.now();
        const sn: QEMUSnapshotInfo = {
          id: '',
          name,
          vmStateSize: 0,
          // qemu_gettimeofday: microseconds, kept as nanoseconds.
          dateSec: Math.floor(now / 1000),
          dateNsec: (now % 1000) * 1_000_000,
          vmClockNsec: 0n,
          icount: 0n,
        };
        try {
          await bdrvSnapshotCreate(bs, sn);
        } catch (e) {
          const errno = isBlockError(e) ? e.errno : 5;
          env.o.error(`Could not create snapshot '${name}': -${errno} (${errnoMessage(e)})`);
          status = 1;
        }
        break;
      }
      case 'apply':
        try {
          await bdrvSnapshotGoto(bs, name);
        } catch (e) {
          env.o.error(`Could not apply snapshot '${name}': ${errorMessage(e)}`);
          status = 1;
        }
        break;
      case 'delete': {
        const sn = await bdrvSnapshotFind(bs, name);
        if (sn === undefined) {
          env.o.error(`Could not delete snapshot '${name}': snapshot not found`);
          status = 1;
          break;
        }
        try {
          await bdrvSnapshotDelete(bs, sn.id, sn.name);
        } catch (e) {
          env.o.error(`Could not delete snapshot '${name}': ${errorMessage(e)}`);
          status = 1;
        }
        break;
      }
      case null:
        break;
    }
  } finally {
    await closeQuietly(blk);
  }
  return status;
}
