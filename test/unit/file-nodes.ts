// The per-test fixture of the host-file tests (file-holes, file-zeroes): a fresh temp dir, the
// seek addon the tests start from (the previous one restored afterwards), and the nodes a test
// opens, closed after it.
import { afterEach, beforeEach } from 'vitest';
import { BlockDriverState } from '../../src/block/node.js';
import { BlockDriverRegistry } from '../../src/block/registry.js';
import { fileDriver } from '../../src/drivers/file/index.js';
import { type SeekAddon, setSeekAddonForTest } from '../../src/drivers/file/seek.js';
import { rawDriver } from '../../src/drivers/raw/index.js';
import { makeTempDir, removeTempDir } from '../interop/qemu.js';

/** The file protocol and raw on top of it: all these tests need. */
export const fileRawRegistry = new BlockDriverRegistry().register(fileDriver).register(rawDriver);

export interface FileNodes {
  /** This test's temp dir. */
  readonly dir: string;
  /**
   * Open `path` as `format`; the node is closed after the test. A bare file node is opened as a
   * format's child sees it (`child`): the file's own length, growth past the end.
   */
  opened(path: string, format?: 'file' | 'raw'): Promise<BlockDriverState>;
}

/**
 * Register the hooks in the enclosing describe. `addon` is handed to setSeekAddonForTest before
 * each test (undefined: the driver loads the real one on first use).
 */
export function useFileNodes(prefix: string, addon: SeekAddon | undefined): FileNodes {
  let dir = '';
  const nodes: BlockDriverState[] = [];
  let saved: SeekAddon | null | undefined;
  beforeEach(() => {
    dir = makeTempDir(prefix);
    saved = setSeekAddonForTest(addon);
  });
  afterEach(async () => {
    for (const n of nodes.splice(0)) await n.close();
    setSeekAddonForTest(saved);
    removeTempDir(dir);
  });
  return {
    get dir(): string {
      return dir;
    },
    async opened(path: string, format: 'file' | 'raw' = 'file'): Promise<BlockDriverState> {
      const bs = await BlockDriverState.open(path, { format, registry: fileRawRegistry, child: true });
      nodes.push(bs);
      return bs;
    },
  };
}
