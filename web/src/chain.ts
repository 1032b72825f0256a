// Which layer answers each guest cluster: block status through the backing chain (the generic
// layer's bdrv_block_status_above), one cell per guest cluster, and a one-line count per layer.
import type { BlockBackend } from '../../src/browser.js';

export async function drawChain(
  el: HTMLElement,
  summary: HTMLElement,
  blk: BlockBackend,
  clusterSize: number,
  backing: string | null,
): Promise<void> {
  const len = await blk.getLength();
  // A base image read through the http driver: each of its cells is a Range request's answer.
  const remote = backing !== null && /^https?:\/\//.test(backing);
  const cells: HTMLElement[] = [];
  const count = { top: 0, zero: 0, base: 0, none: 0 };
  /** Guest byte ranges the base answers, adjacent ones merged. */
  const baseRanges: [number, number][] = [];
  for (let off = 0; off < len; ) {
    const st = await blk.blockStatusAbove(off, len - off);
    const layer = !st.allocated ? 'none' : st.depth === 0 ? (st.data ? 'top' : 'zero') : `base${st.depth}`;
    const cls = layer.startsWith('base') ? 'base' : (layer as 'top' | 'zero' | 'none');
    const from = cls !== 'base' ? '' : remote && st.depth === 1 ? `${backing} over http (Range requests)` : `backing file (depth ${st.depth})`;
    for (let c = off; c < off + st.pnum; c += clusterSize) {
      const cell = document.createElement('div');
      cell.className = `guest ${cls}${cls === 'base' && remote ? ' remote' : ''}`;
      cell.dataset.layer = layer;
      if (cls === 'base' && remote) cell.dataset.remote = 'true';
      cell.title = `guest ${c}: ${cls === 'none' ? 'unallocated: reads as zeros' : cls === 'top' ? 'this image' : cls === 'zero' ? 'zero cluster' : from}`;
      cells.push(cell);
      count[cls]++;
    }
    const prev = baseRanges.at(-1);
    if (cls === 'base' && prev?.[1] === off) prev[1] = off + st.pnum;
    else if (cls === 'base') baseRanges.push([off, off + st.pnum]);
    off += st.pnum;
  }
  el.replaceChildren(...cells);
  const parts = [`${count.top} cluster(s) answered by this image`];
  if (count.zero > 0) parts.push(`${count.zero} zero cluster(s)`);
  if (count.base > 0) {
    const hex = (n: number): string => `0x${n.toString(16)}`;
    const ranges = baseRanges.map(([a, b]) => `${hex(a)}-${hex(b - 1)}`).join(', ');
    parts.push(`${count.base} by the ${remote ? `base image fetched over http (${backing})` : 'backing file'}: guest bytes ${ranges}`);
  }
  if (count.none > 0) parts.push(`${count.none} unallocated (read as zeros)`);
  summary.textContent = `${parts.join(', ')}.`;
  summary.dataset.remote = String(remote && count.base > 0);
}
