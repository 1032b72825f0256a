// -l of convert and measure: read an internal snapshot instead of the image's active state
// (bdrv_snapshot_load_tmp), named as an id or name (`-l NAME`) or by internal_snapshot_opts
// (`-l snapshot.id=ID,snapshot.name=NAME`).
import { bdrvSnapshotLoadTmp, bdrvSnapshotLoadTmpByIdOrName, type BlockDriverState } from '../../index.js';
import { parseOptsNoisily } from '../shared/image-opts.js';
import { ToolExit, errorMessage } from '../shared/output.js';
import type { ImgEnv } from './env.js';
import type { ImgOption } from './options.js';

export interface SnapshotArgs {
  /** -l snapshot.id=..,snapshot.name=.. */
  snapshotOpts: Map<string, string> | null;
  /** -l NAME: an id, else a name. */
  snapshotName: string | null;
}

export const SNAPSHOT_LOAD: ImgOption<SnapshotArgs> = {
  short: 'l',
  arg: 1,
  set: (s, arg, env) => {
    if (!arg.startsWith('snapshot.')) {
      s.snapshotName = arg;
      return;
    }
    // internal_snapshot_opts: snapshot.id and snapshot.name only.
    const opts = parseOptsNoisily(env.o, arg, {});
    const bad = opts === null ? undefined : [...opts.keys()].find((k) => k !== 'snapshot.id' && k !== 'snapshot.name');
    if (bad !== undefined) env.o.error(`Invalid parameter '${bad}'`);
    if (opts === null || bad !== undefined) {
      env.o.error(`Failed in parsing snapshot param '${arg}'`);
      throw new ToolExit(1);
    }
    s.snapshotOpts = opts;
  },
};

/**
 * Show the snapshot -l asked for on a read-only node (nothing when none was asked). False,
 * after qemu-img's message, when it cannot be loaded.
 */
export async function loadSnapshotArg(env: ImgEnv, bs: BlockDriverState, args: SnapshotArgs): Promise<boolean> {
  try {
    if (args.snapshotOpts !== null) await bdrvSnapshotLoadTmp(bs, args.snapshotOpts.get('snapshot.id'), args.snapshotOpts.get('snapshot.name'));
    else if (args.snapshotName !== null) await bdrvSnapshotLoadTmpByIdOrName(bs, args.snapshotName);
    return true;
  } catch (e) {
    env.o.error(`Failed to load snapshot: ${errorMessage(e)}`);
    return false;
  }
}
