/**
 * Amending a node's format options in place (QEMU's bdrv_amend_options): the generic side of
 * the driver's amend hook.
 */
import type { AmendStatus, CreateOptions } from './driver.js';
import { BlockError } from './errors.js';
import { checkWritable } from './io/requests.js';
import type { BlockDriverState } from './node.js';

/**
 * Change the options present in `options` (keyed as the driver's amendOptions say). Not
 * counted as a request of the node: the driver's steps (a resize among them) are.
 */
export async function bdrvAmendOptions(bs: BlockDriverState, options: CreateOptions, status: AmendStatus = () => undefined, force = false): Promise<void> {
  if (!bs.driver.amend) {
    throw new BlockError('ENOTSUP', `Block driver '${bs.driver.formatName}' does not support option amendment`, { op: 'amend' });
  }
  checkWritable(bs, 'amend');
  await bs.driver.amend(bs, options, status, force);
}
