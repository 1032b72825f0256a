// Which layer answers each guest cluster: block status through the backing chain (the generic
// layer's bdrv_block_status_above), one cell per guest cluster.
import type { BlockBackend } from '../../src/browser.js';

export async function drawChain(el: HTMLElement, blk: BlockBackend, clusterSize: number): Promise<void> {
  const len = await blk.getLength();
  const cells: HTMLElement[] = [];
  for (let off = 0; off < len; ) {
    const st = await blk.blockStatusAbove(off, len - off);
    const layer = !st.allocated ? 'none' : st.depth === 0 ? (st.data ? 'top' : 'zero') : `base${st.depth}`;
    for (let c = off; c < off + st.pnum; c += clusterSize) {
      const cell = document.createElement('div');
      cell.className = `guest ${layer.startsWith('base') ? 'base' : layer}`;
      cell.dataset.layer = layer;
      cell.title = `guest ${c}: ${layer === 'none' ? 'unallocated: reads as zeros' : layer === 'top' ? 'this image' : layer === 'zero' ? 'zero cluster' : `backing file (depth ${st.depth})`}`;
      cells.push(cell);
    }
    off += st.pnum;
  }
  el.replaceChildren(...cells);
}
