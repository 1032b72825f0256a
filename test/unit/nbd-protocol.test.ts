import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BlockError } from '../../src/block/errors.js';
import * as p from '../../src/nbd/protocol.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

describe('nbd protocol codecs', () => {
  it('greeting is the 18 bytes qemu-nbd sends', () => {
    expect(hex(p.encodeGreeting())).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
    expect(p.decodeGreeting(p.encodeGreeting()).flags).toBe(3);
    const old = Buffer.from('4e42444d4147494300004202818612530000', 'hex');
    expect(() => p.decodeGreeting(old)).toThrow('oldstyle');
  });

  it('option header round-trips and rejects a bad magic', () => {
    const h = p.encodeOptionHeader(p.NBD_OPT_GO, 1234);
    expect(hex(h)).toBe('49484156454f5054' + '00000007' + '000004d2');
    expect(p.decodeOptionHeader(h)).toEqual({ option: 7, length: 1234 });
    h[0] = 0;
    expect(() => p.decodeOptionHeader(h)).toThrow(BlockError);
  });

  it('INFO/GO data round-trips; inconsistent lengths get qemu texts', () => {
    const req = { name: 'exp1', infos: [p.NBD_INFO_BLOCK_SIZE, p.NBD_INFO_NAME] };
    const data = p.encodeInfoRequest(req);
    expect(hex(data)).toBe('00000004' + Buffer.from('exp1').toString('hex') + '0002' + '0003' + '0001');
    expect(p.decodeInfoRequest(data, p.NBD_OPT_GO)).toEqual(req);
    expect(() => p.decodeInfoRequest(data.subarray(0, data.length - 1), p.NBD_OPT_GO)).toThrow(
      'Inconsistent lengths in option go',
    );
    const long = new Uint8Array(10);
    new DataView(long.buffer).setUint32(0, 5000);
    expect(() => p.decodeInfoRequest(long, p.NBD_OPT_INFO)).toThrow('Invalid name length: 5000');
  });

  it('meta context data round-trips and refuses overruns', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), fc.array(fc.string({ maxLength: 30 }), { maxLength: 5 }), (exportName, queries) => {
        const data = p.encodeMetaContextRequest({ exportName, queries });
        expect(p.decodeMetaContextRequest(data, p.NBD_OPT_SET_META_CONTEXT)).toEqual({ exportName, queries });
        if (data.length > 0) {
          expect(() => p.decodeMetaContextRequest(data.subarray(0, data.length - 1), p.NBD_OPT_SET_META_CONTEXT)).toThrow(
            'Inconsistent lengths in option set meta context',
          );
        }
      }),
    );
  });

  it('option replies, info items, server and meta context replies round-trip', () => {
    const r = p.encodeOptionReply(p.NBD_OPT_LIST, p.NBD_REP_SERVER, p.encodeServerReply('a', 'desc'));
    expect(p.decodeOptionReplyHeader(r.subarray(0, 20))).toEqual({ option: 3, type: 2, length: 9 });
    expect(p.decodeServerReply(r.subarray(20))).toEqual({ name: 'a', description: 'desc' });
    expect(p.decodeMetaContextReply(p.encodeMetaContextReply(1, 'qemu:allocation-depth'))).toEqual({
      id: 1,
      name: 'qemu:allocation-depth',
    });
    expect(p.decodeInfoReply(p.encodeInfoExport(4194304, 0xced))).toEqual({ type: 0, size: 4194304n, flags: 0xced });
    expect(p.decodeInfoReply(p.encodeInfoBlockSize(1, 4096, 33554432))).toEqual({
      type: 3,
      minimum: 1,
      preferred: 4096,
      maximum: 33554432,
    });
    expect(p.decodeInfoReply(p.encodeInfoName('x'))).toEqual({ type: 1, name: 'x' });
    expect(p.decodeInfoReply(p.encodeInfoDescription('d'))).toEqual({ type: 2, description: 'd' });
    expect(p.encodeExportNameReply(512, 3, false).length).toBe(134);
    expect(p.decodeExportNameReply(p.encodeExportNameReply(512, 3, true))).toEqual({ size: 512n, flags: 3 });
    expect(p.isReplyError(p.NBD_REP_ERR_UNKNOWN)).toBe(true);
    expect(p.NBD_REP_ERR_UNKNOWN).toBe(0x80000006);
  });

  it('requests round-trip with 64-bit offsets and cookies', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffff }),
        fc.integer({ min: 0, max: 0xffff }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
        fc.integer({ min: 0, max: 0xffffffff }),
        (flags, type, cookie, offset, length) => {
          const d = p.decodeRequest(p.encodeRequest({ flags, type, cookie, offset, length }));
          expect(d).toEqual({ magic: p.NBD_REQUEST_MAGIC, magicOk: true, flags, type, cookie, offset, length });
        },
      ),
    );
    const bad = p.encodeRequest({ type: 0, cookie: 7n, offset: 0, length: 0 });
    bad[0] = 0x12;
    expect(p.decodeRequest(bad)).toMatchObject({ magicOk: false, cookie: 7n });
  });

  it('simple replies and chunks encode and decode', () => {
    const s = p.encodeSimpleReply(9n, 22);
    expect(p.replyKind(s)).toBe('simple');
    expect(p.decodeSimpleReply(s)).toEqual({ error: 22, cookie: 9n });

    const data = p.encodeOffsetDataChunk(5n, 4096, new Uint8Array([1, 2, 3]), false);
    const h = p.decodeChunkHeader(data.header);
    expect(h).toEqual({ flags: 0, type: p.NBD_REPLY_TYPE_OFFSET_DATA, cookie: 5n, length: 11 });
    const bytes = p.chunkBytes(data);
    expect(p.replyKind(bytes)).toBe('structured');
    expect(p.decodeOffsetData(bytes.subarray(20))).toEqual({ offset: 4096n, data: new Uint8Array([1, 2, 3]) });

    const hole = p.chunkBytes(p.encodeOffsetHoleChunk(5n, 0, 65536, true));
    expect(p.decodeChunkHeader(hole.subarray(0, 20)).flags).toBe(p.NBD_REPLY_FLAG_DONE);
    expect(p.decodeOffsetHole(hole.subarray(20))).toEqual({ offset: 0n, size: 65536 });

    const bs = p.chunkBytes(p.encodeBlockStatusChunk(1n, 1, [{ length: 512, flags: 3 }, { length: 1024, flags: 0 }], true));
    expect(p.decodeBlockStatus(bs.subarray(20))).toEqual({
      contextId: 1,
      extents: [
        { length: 512, flags: 3 },
        { length: 1024, flags: 0 },
      ],
    });

    const err = p.chunkBytes(p.encodeErrorChunk(2n, 22, 'operation past EOF'));
    const eh = p.decodeChunkHeader(err.subarray(0, 20));
    expect(p.isChunkError(eh.type)).toBe(true);
    expect(p.decodeErrorChunk(eh.type, err.subarray(20))).toEqual({ errno: 22, message: 'operation past EOF' });
    const erro = p.chunkBytes(p.encodeErrorChunk(2n, 5, 'x', true, 1024));
    expect(p.decodeErrorChunk(p.NBD_REPLY_TYPE_ERROR_OFFSET, erro.subarray(20))).toEqual({ errno: 5, message: 'x', offset: 1024n });
    expect(p.chunkBytes(p.encodeNoneChunk(3n)).length).toBe(20);
  });

  it('maps block errors to wire errno values as qemu and back', () => {
    expect(p.nbdErrnoFromError(new BlockError('EROFS'))).toBe(1);
    expect(p.nbdErrnoFromError(new BlockError('EIO'))).toBe(5);
    expect(p.nbdErrnoFromError(new BlockError('EFBIG'))).toBe(28);
    expect(p.nbdErrnoFromError(new BlockError('ENOTSUP'))).toBe(95);
    expect(p.nbdErrnoFromError(new BlockError('EACCES'))).toBe(22);
    expect(p.nbdErrnoFromError(new BlockError('ECANCELED'), true)).toBe(108);
    expect(p.nbdErrnoFromError(new BlockError('EIO', 'x', { errno: 12 }))).toBe(12);
    expect(p.blockErrorFromNbdErrno(28)).toMatchObject({ code: 'ENOSPC', errno: 28 });
    expect(p.blockErrorFromNbdErrno(75)).toMatchObject({ errno: 75 });
    expect(p.blockErrorFromNbdErrno(4242)).toMatchObject({ code: 'EINVAL', errno: 22 });
    expect(p.nbdFlagNames(0xced)).toBe('flush fua trim zeroes df cache fast-zero');
    expect(p.nbdOptName(11)).toBe('<unknown>');
  });
});
