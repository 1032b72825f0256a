// After a power cut: the disk drawn as the crash left it (before any repair), and the story in a
// few lines: where the power went, what the crash kept, what the check found, what the reopen
// and the repair did, and whether the new data survived.
import { drawLayout, type ImageLayout } from './layout.js';

export interface Aftermath {
  /** "before step 15: l2_update: ..." */
  step: string;
  /** What the powerloss disk did with the unflushed writes. */
  crash: string;
  /** Which steps were flushed before the cut. */
  durable: string;
  /** The file's layout right after the crash. */
  crashed: ImageLayout | null;
  /** Output of the check run on the crashed image, of the reopen, of a repair if one ran. */
  checkAfterCrash: string;
  reopen: string;
  repair: string | null;
  /** Output of the check after everything. */
  finalCheck: string;
  survived: boolean;
}

/** The lines of a check's (or an open's) output that say what was found and done. */
export function verdict(text: string): string {
  const keep = text
    .split('\n')
    .filter((l) => /leaked clusters were found|No errors were found|corruptions were found|^Repairing |^Leaked cluster|^ERROR|were found and repaired|^\s+\d+ (leaked clusters|corruptions)/.test(l))
    .map((l) => l.trim().replace(/[.:]$/, ''));
  return keep.length === 0 ? 'nothing to report' : keep.join('; ');
}

export function drawAftermath(list: HTMLElement, disk: HTMLElement, a: Aftermath): void {
  const leaks = new Set<number>();
  a.crashed?.clusters.forEach((k, i) => {
    if (k === 'leak') leaks.add(i);
  });
  drawLayout(disk, a.crashed, leaks);
  const lines = [
    `The power went ${a.step}.`,
    `${a.durable}.`,
    `${a.crash}.`,
    `Right after the crash, ${a.crashed?.dirty === true ? 'the image is marked dirty' : 'the image is not marked dirty'}; blk-img check: ${verdict(a.checkAfterCrash)}.`,
    a.crashed?.dirty === true
      ? `The read-write open saw the dirty bit and repaired: ${verdict(a.reopen)}.`
      : 'The read-write open checked nothing: no dirty bit asks it to.',
  ];
  if (a.repair !== null) lines.push(`blk-img check -r leaks gave the leaked clusters back: ${verdict(a.repair)}.`);
  lines.push(`Now blk-img check says: ${verdict(a.finalCheck)}.`);
  lines.push(a.survived ? 'The new data survived: it reads back whole.' : 'The new data was lost: the range reads as before the write.');
  list.replaceChildren(
    ...lines.map((t) => {
      const li = document.createElement('li');
      li.textContent = t;
      return li;
    }),
  );
  list.dataset.survived = String(a.survived);
  list.hidden = false;
  disk.parentElement!.hidden = false;
}
