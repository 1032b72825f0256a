/**
 * One error type for the whole block layer. `code` is a small errno-like string that callers
 * match on; `op`, `offset` and `path` say where it happened.
 */
export type BlockErrorCode =
  | 'EINVAL'
  | 'EIO'
  | 'ENOSPC'
  | 'ENOTSUP'
  | 'EFBIG'
  | 'EROFS'
  | 'EACCES'
  | 'EPERM'
  | 'ENOENT'
  | 'EISDIR'
  | 'EEXIST'
  | 'ECANCELED'
  | 'EBUSY'
  | 'ENOMEDIUM'
  | 'ELOOP'
  | 'EMEDIUMTYPE'
  | 'ENOTDIR'
  | 'EBADF';

/** Text QEMU prints for each code (strerror on Linux), used by the tools. */
export const ERRNO_MESSAGES: Record<BlockErrorCode, string> = {
  EINVAL: 'Invalid argument',
  EIO: 'Input/output error',
  ENOSPC: 'No space left on device',
  ENOTSUP: 'Operation not supported',
  EFBIG: 'File too large',
  EROFS: 'Read-only file system',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EISDIR: 'Is a directory',
  EEXIST: 'File exists',
  ECANCELED: 'Operation canceled',
  EBUSY: 'Device or resource busy',
  ENOMEDIUM: 'No medium found',
  ELOOP: 'Too many levels of symbolic links',
  EMEDIUMTYPE: 'Wrong medium type',
  ENOTDIR: 'Not a directory',
  EBADF: 'Bad file descriptor',
};

/** Linux errno numbers, for blkdebug's `errno = N` rules and exit statuses. */
export const ERRNO_NUMBERS: Record<BlockErrorCode, number> = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EACCES: 13,
  EBUSY: 16,
  EEXIST: 17,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ELOOP: 40,
  ENOTSUP: 95,
  ECANCELED: 125,
  ENOMEDIUM: 123,
  EMEDIUMTYPE: 124,
};

export interface BlockErrorDetails {
  op?: string;
  offset?: number;
  path?: string;
  cause?: unknown;
  /**
   * A raw errno number and its strerror() text, for errors no BlockErrorCode names (blkdebug
   * injects any number); `code` then stays a generic category. Optional: omitted, the code's
   * own number and text apply.
   */
  errno?: number;
  errnoText?: string;
}

export class BlockError extends Error {
  override readonly name = 'BlockError';
  readonly code: BlockErrorCode;
  readonly op: string | undefined;
  readonly offset: number | undefined;
  readonly path: string | undefined;
  /** The errno number this error stands for (the code's own unless one was given). */
  readonly errno: number;
  private readonly errnoText: string | undefined;

  constructor(code: BlockErrorCode, message?: string, details: BlockErrorDetails = {}) {
    super(message ?? details.errnoText ?? ERRNO_MESSAGES[code], details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.op = details.op;
    this.offset = details.offset;
    this.path = details.path;
    this.errno = details.errno ?? ERRNO_NUMBERS[code];
    this.errnoText = details.errnoText;
  }

  /** The strerror-style text for this error ("Input/output error"; a raw errno's own text). */
  get errnoMessage(): string {
    return this.errnoText ?? ERRNO_MESSAGES[this.code];
  }
}

export function isBlockError(e: unknown, code?: BlockErrorCode): e is BlockError {
  return e instanceof BlockError && (code === undefined || e.code === code);
}

/** Look a code up by errno number (blkdebug's `errno = 5`). */
export function codeFromErrno(errno: number): BlockErrorCode | undefined {
  for (const [code, n] of Object.entries(ERRNO_NUMBERS)) {
    if (n === errno) return code as BlockErrorCode;
  }
  return undefined;
}

/** Wrap anything thrown by lower layers (Node's fs errors included) as a BlockError. */
export function toBlockError(e: unknown, details: BlockErrorDetails = {}): BlockError {
  if (e instanceof BlockError) return e;
  const sysCode = (e as { code?: unknown } | null)?.code;
  if (typeof sysCode === 'string' && sysCode in ERRNO_MESSAGES) {
    const code = sysCode as BlockErrorCode;
    const where = details.path === undefined ? '' : `${details.path}: `;
    return new BlockError(code, `${where}${ERRNO_MESSAGES[code]}`, { ...details, cause: e });
  }
  const message = e instanceof Error ? e.message : String(e);
  return new BlockError('EIO', message, { ...details, cause: e });
}
