import { describe, expect, it } from 'vitest';
import { isBlockError } from '../../src/block/errors.js';
import { nbdCanonicalName, nbdConfig } from '../../src/drivers/nbd/config.js';

function canon(filename: string, options: Record<string, string> = {}): string | null {
  return nbdCanonicalName(nbdConfig(filename, options));
}

function errorOf(filename: string, options: Record<string, string> = {}): string {
  try {
    nbdConfig(filename, options);
  } catch (e) {
    if (isBlockError(e, 'EINVAL')) return e.message;
    throw e;
  }
  throw new Error(`'${filename}' was accepted`);
}

describe('nbd filenames and options', () => {
  it('shows URIs and legacy names the way QEMU does', () => {
    expect(canon('nbd://localhost/exp')).toBe('nbd://localhost:10809/exp');
    expect(canon('nbd://127.0.0.1:10810')).toBe('nbd://127.0.0.1:10810');
    expect(canon('nbd+tcp://h:1/a/b')).toBe('nbd://h:1/a/b');
    expect(canon('nbd://[::1]:5/x')).toBe('nbd://::1:5/x');
    expect(canon('nbd+unix:///exp?socket=/tmp/s')).toBe('nbd+unix:///exp?socket=/tmp/s');
    expect(canon('nbd+unix://?socket=/tmp/s')).toBe('nbd+unix://?socket=/tmp/s');
    expect(canon('nbd:h:7:exportname=e')).toBe('nbd://h:7/e');
    expect(canon('nbd:unix:/tmp/s:exportname=e')).toBe('nbd+unix:///e?socket=/tmp/s');
    expect(canon('nbd:unix:/tmp/s')).toBe('nbd+unix://?socket=/tmp/s');
  });

  it('takes the option keys --image-opts passes', () => {
    const cfg = nbdConfig('', { 'server.type': 'unix', 'server.path': '/s', export: 'e', 'x-dirty-bitmap': 'qemu:dirty-bitmap:b' });
    expect(cfg.server).toEqual({ type: 'unix', path: '/s' });
    expect(cfg.export).toBe('e');
    expect(cfg.dirtyBitmap).toBe('qemu:dirty-bitmap:b');
    expect(nbdConfig('', { host: 'h', port: '9' }).server).toEqual({ type: 'inet', host: 'h', port: '9' });
    expect(nbdConfig('', { host: 'h' }).server).toEqual({ type: 'inet', host: 'h', port: '10809' });
    expect(nbdConfig('nbd://h/e').server).toEqual({ type: 'inet', host: 'h', port: '10809' });
    expect(nbdConfig('', { 'server.type': 'inet', 'server.host': 'h', 'server.port': '9', 'server.ipv6': 'on' }).server).toEqual({
      type: 'inet',
      host: 'h',
      port: '9',
      family: 6,
      noUri: true,
    });
    // With ipv4/ipv6 the address has no nbd:// spelling: QEMU shows the node by its options.
    expect(canon('', { 'server.type': 'inet', 'server.host': 'h', 'server.port': '9', 'server.ipv4': 'off' })).toBeNull();
    // reconnect-delay is a uint32_t in QEMU: the low 32 bits of the number given.
    expect(nbdConfig('nbd://h/e', { 'reconnect-delay': '4294967297' }).reconnectDelay).toBe(1);
    expect(nbdConfig('nbd://h/e', { 'open-timeout': '-1' }).openTimeout).toBe(0xffffffff);
  });

  it('refuses what QEMU refuses', () => {
    expect(errorOf('nbd+unix:///x')).toBe('No valid URL specified');
    expect(errorOf('nbd://h/x?socket=/s')).toBe('No valid URL specified');
    expect(errorOf('nbd+unix:///x?socket=/s&a=b')).toBe('No valid URL specified');
    expect(errorOf('nbd+unix:///x?sock=/s')).toBe('No valid URL specified');
    expect(errorOf('nbds://h/x')).toBe("Unknown protocol 'nbds'");
    expect(errorOf('nbd://h/x', { bogus: '1' })).toBe("Block protocol 'nbd' doesn't support the option 'bogus'");
    expect(errorOf('nbd:h:1', { export: 'x' })).toBe('host/port/path and a file name may not be specified at the same time');
    expect(errorOf('nbd:h:1?x')).toBe('No valid URL specified');
    // Measured with qemu-img 7.2: SocketAddress's own field names, and no default port for
    // server.* (only the legacy host key and filenames default it).
    expect(errorOf('', { 'server.type': 'inet' })).toBe("Parameter 'host' is missing");
    expect(errorOf('', { 'server.type': 'inet', 'server.host': 'h' })).toBe("Parameter 'port' is missing");
    expect(errorOf('', { 'server.type': 'unix' })).toBe("Parameter 'path' is missing");
    expect(errorOf('', { 'server.type': 'bogus' })).toBe("Parameter 'type' does not accept value 'bogus'");
    expect(errorOf('', { 'server.type': 'unix', 'server.path': '/s', 'server.host': 'h' })).toBe("Parameter 'host' is unexpected");
    expect(errorOf('', { 'server.type': 'unix', 'server.path': '/s', 'server.tight': 'x' })).toBe("Parameter 'tight' expects 'on' or 'off'");
    expect(errorOf('', {})).toBe('NBD server address missing');
    expect(errorOf('', { port: '1' })).toBe('NBD server address missing');
    expect(errorOf('', { path: '/s', port: '1' })).toBe('port may not be used without host');
    expect(errorOf('', { path: '/s', host: 'h' })).toBe('path and host may not be used at the same time');
    expect(errorOf('nbd://h/e', { 'reconnect-delay': 'x' })).toBe("Parameter 'reconnect-delay' expects a number");
    expect(errorOf('', { host: 'h', 'server.type': 'inet' })).toBe("Cannot use 'server' and path/host/port at the same time");
    expect(errorOf('nbd://h/' + 'x'.repeat(4097))).toBe('export name too long to send to server');
  });
});
