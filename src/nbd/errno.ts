/**
 * NBD errno values on the wire and their mapping to and from BlockError, as QEMU maps them.
 */
import { BlockError, type BlockErrorCode } from '../block/errors.js';

export const NBD_SUCCESS = 0;
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/**
 * A block-layer error as the NBD errno a server sends. The raw errno number decides (blkdebug
 * can inject any); QEMU folds EROFS into EPERM, EDQUOT and EFBIG into ENOSPC, and everything it
 * has no wire value for into EINVAL. `stopping` turns ECANCELED into ESHUTDOWN.
 */
export function nbdErrnoFromError(e: unknown, stopping = false): number {
  if (!(e instanceof BlockError)) return NBD_EIO;
  switch (e.errno) {
    case 1: // EPERM
    case 30: // EROFS
      return NBD_EPERM;
    case 5:
      return NBD_EIO;
    case 12:
      return NBD_ENOMEM;
    case 27: // EFBIG
    case 28: // ENOSPC
    case 122: // EDQUOT
      return NBD_ENOSPC;
    case 75:
      return NBD_EOVERFLOW;
    case 95:
      return NBD_ENOTSUP;
    case 108:
      return NBD_ESHUTDOWN;
    case 125: // ECANCELED
      return stopping ? NBD_ESHUTDOWN : NBD_EINVAL;
    default:
      return NBD_EINVAL;
  }
}

const WIRE_ERRNO: Record<number, { code: BlockErrorCode; text: string }> = {
  [NBD_EPERM]: { code: 'EPERM', text: 'Operation not permitted' },
  [NBD_EIO]: { code: 'EIO', text: 'Input/output error' },
  // No BlockErrorCode of their own: a generic code carrying the raw errno and its text.
  [NBD_ENOMEM]: { code: 'EIO', text: 'Cannot allocate memory' },
  [NBD_EINVAL]: { code: 'EINVAL', text: 'Invalid argument' },
  [NBD_ENOSPC]: { code: 'ENOSPC', text: 'No space left on device' },
  [NBD_EOVERFLOW]: { code: 'EINVAL', text: 'Value too large for defined data type' },
  [NBD_ENOTSUP]: { code: 'ENOTSUP', text: 'Operation not supported' },
  [NBD_ESHUTDOWN]: { code: 'EIO', text: 'Cannot send after transport endpoint shutdown' },
};

/**
 * An NBD errno a client received, as a BlockError: the eight wire values keep their number
 * (`errno`), anything else is EINVAL as QEMU's client does.
 */
export function blockErrorFromNbdErrno(errno: number, message?: string, op?: string): BlockError {
  const known = WIRE_ERRNO[errno] ?? WIRE_ERRNO[NBD_EINVAL];
  const number = WIRE_ERRNO[errno] === undefined ? NBD_EINVAL : errno;
  return new BlockError(known.code, message !== undefined && message !== '' ? message : known.text, {
    op,
    errno: number,
    errnoText: known.text,
  });
}

