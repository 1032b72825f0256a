// The teaching page: one QED or qcow2 image (on a powerloss disk in memory, or in the Origin
// Private File System), drawn as it is on disk and as the guest sees it through its backing chain
// (possibly a base image over http); a console running blk-io and blk-img; step mode for one
// allocating write; pulling the plug at a step.
import { opfsSetPort, powerlossStoreCreate, powerlossStoreGet, type PowerLossStore } from '../../src/browser.js';
import { drawAftermath } from './aftermath.js';
import { drawChain } from './chain.js';
import { drawLayout, drawRefmap, imageLayout } from './layout.js';
import { QCOW2_STEPS } from './steps-qcow2.js';
import { QED_STEPS } from './steps-qed.js';
import { recordSteps, type Step } from './steps.js';
import { PageTools } from './tools.js';

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => document.getElementById(id) as T;

const out = $('out');
/** While set, what the tools print is kept here too (to tell the story of a power cut). */
let capture: string[] | null = null;
function print(text: string, cls: 'out' | 'err' | 'cmd' | 'note' = 'out'): void {
  if (cls !== 'cmd') capture?.push(text);
  const span = document.createElement('span');
  span.className = cls;
  span.textContent = text;
  out.append(span);
  out.scrollTop = out.scrollHeight;
}

const tools = new PageTools((t, stream) => print(t, stream));
let imageName = '';
const PATTERN = 0xaa;

opfsSetPort(new Worker(new URL('./opfs-worker.js', import.meta.url), { type: 'module' }));

function storeName(): string {
  return imageName.startsWith('powerloss:') ? imageName.slice('powerloss:'.length) : '';
}

function store(): PowerLossStore | null {
  const n = storeName();
  return n === '' ? null : (powerlossStoreGet(n) ?? null);
}

/** The image file's bytes, through the protocol node (any storage). */
async function fileBytes(): Promise<Uint8Array> {
  const f = tools.root?.file;
  // Closed (between a crash and the reopen): the powerloss disk as it is.
  if (!f) return store()?.toBytes() ?? new Uint8Array(0);
  const buf = new Uint8Array(await f.getLength());
  await f.pread(0, buf);
  return buf;
}

async function redraw(bytes?: Uint8Array, hot: ReadonlySet<number> = new Set(), when = ''): Promise<void> {
  $('disk-when').textContent = when;
  const layout = imageLayout(bytes ?? (await fileBytes()));
  drawLayout($('layout'), layout, hot);
  drawRefmap($('refmap'), layout);
  $('facts').textContent =
    layout === null
      ? ''
      : `${imageName}: ${layout.facts}, virtual ${layout.imageSize} B, file ${layout.clusters.length} clusters, ` +
        `${layout.dirty ? 'DIRTY (needs check)' : 'clean'}${layout.backing === null ? '' : `, backing ${layout.backing}`}`;
  $('facts').dataset.dirty = String(layout?.dirty ?? false);
  $('facts').dataset.format = layout?.format ?? '';
  if (tools.blk && layout) await drawChain($('chain'), $('chain-summary'), tools.blk, layout.clusterSize, layout.backing);
}

/** Run a console line, echoing it, then redraw. */
async function command(line: string): Promise<number> {
  print(`> ${line}\n`, 'cmd');
  const r = await tools.run(line);
  await redraw();
  return r;
}

/** Run `f`, returning what it printed too. */
async function captured<T>(f: () => Promise<T>): Promise<{ r: T; text: string }> {
  capture = [];
  try {
    const r = await f();
    return { r, text: capture.join('') };
  } finally {
    capture = null;
  }
}

function hideAftermath(): void {
  $('report').hidden = true;
  $('crashed').parentElement!.hidden = true;
}

async function createImage(): Promise<void> {
  const storage = $<HTMLSelectElement>('storage').value;
  const withBase = $<HTMLInputElement>('with-base').checked;
  const format = $<HTMLSelectElement>('format').value;
  await tools.close();
  hideAftermath();
  imageName = selectedName();
  if (storage !== 'opfs') powerlossStoreCreate(storeName(), new Uint8Array(0));
  // Served next to the page: any static host that answers Range requests will do.
  const base = new URL('dist/base.raw', location.href).href;
  const backing = withBase ? `-b ${base} -F raw ` : '';
  // 4 KiB clusters keep the whole file on screen: one L2 table maps the 1 MiB disk.
  const opts = format === 'qed' ? 'cluster_size=4096,table_size=1' : `cluster_size=4096${format === 'qcow2-lazy' ? ',lazy_refcounts=on' : ''}`;
  await command(`blk-img create -f ${format === 'qed' ? 'qed' : 'qcow2'} ${backing}-o ${opts} ${imageName} 1M`);
  await openImage();
}

function selectedName(): string {
  const file = $<HTMLSelectElement>('format').value === 'qed' ? 'teach.qed' : 'teach.qcow2';
  return `${$<HTMLSelectElement>('storage').value === 'opfs' ? 'opfs' : 'powerloss'}:${file}`;
}

async function openImage(name = selectedName()): Promise<void> {
  await tools.close();
  imageName = name;
  print(`> open ${imageName}\n`, 'cmd');
  await tools.open(imageName);
  await redraw();
}

// ---- step mode and the power cut --------------------------------------------------------------

interface Recording {
  steps: Step[];
  before: Uint8Array;
  offset: number;
  current: number;
}
let rec: Recording | null = null;

/** The first guest cluster nothing in this image maps yet (a write there allocates). */
async function unallocatedOffset(): Promise<number> {
  const blk = tools.blk!;
  const len = await blk.getLength();
  for (let off = 0; off < len; off += 4096) {
    if (!(await blk.isAllocated(off, 4096)).allocated) return off;
  }
  return 0;
}

async function stepWrite(): Promise<void> {
  const st = store();
  if (!st || !tools.root) {
    print('step mode needs an image on the powerloss disk\n', 'err');
    return;
  }
  hideAftermath();
  const offset = Number($<HTMLInputElement>('step-offset').value || (await unallocatedOffset()));
  // Everything so far durable, and a fresh open: the write replays identically after the plug.
  await tools.blk!.flush();
  await tools.close();
  const before = st.toBytes();
  const root = (await tools.open(imageName)) ? tools.root : null;
  if (root === null) return;
  const layout = imageLayout(before)!;
  const r = recordSteps(root, st, layout.clusterSize, layout.format === 'qed' ? QED_STEPS : QCOW2_STEPS);
  const start = st.opCount;
  // Stop recording before drawing: the drawing reads the file, and those reads are requests too.
  print(`> write -P ${PATTERN} ${offset} 4k\n`, 'cmd');
  await tools.run(`write -P ${PATTERN} ${offset} 4k`);
  r.stop();
  await redraw();
  for (const s of r.steps) s.op -= start;
  rec = { steps: r.steps, before, offset, current: -1 };
  showSteps();
}

function showSteps(): void {
  const ol = $('steps');
  ol.replaceChildren();
  if (!rec) {
    $<HTMLButtonElement>('next').disabled = true;
    return;
  }
  rec.steps.forEach((s, i) => {
    const li = document.createElement('li');
    li.dataset.kind = s.kind;
    li.className = i === rec!.current ? 'current' : i < rec!.current ? 'done' : '';
    const b = document.createElement('b');
    b.textContent = s.title;
    const why = document.createElement('div');
    why.className = 'why';
    why.textContent = s.why;
    li.append(b, why);
    ol.append(li);
  });
  $<HTMLButtonElement>('next').disabled = rec.current >= rec.steps.length - 1;
  $<HTMLButtonElement>('plug').disabled = false;
}

async function nextStep(): Promise<void> {
  if (!rec || rec.current >= rec.steps.length - 1) return;
  rec.current++;
  showSteps();
  const s = rec.steps[rec.current];
  await redraw(s.after, new Set(s.clusters), `as it is after step ${rec.current + 1} of ${rec.steps.length}: ${s.title}`);
}

/** A small deterministic generator, so a power cut can be replayed. */
function seeded(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

let plugs = 0;

/**
 * Pull the plug just before the current step (before the first, when none is shown): the same
 * write runs again on the image as it was, the powerloss disk refuses every request from that
 * step on, then keeps a random part of what was not flushed. Reopening runs the open-time check.
 */
async function pullPlug(): Promise<void> {
  if (!rec) return;
  const at = Math.max(rec.current, 0);
  const name = storeName();
  await tools.close();
  const st = powerlossStoreCreate(name, rec.before);
  await tools.open(imageName);
  st.failAfter(rec.steps[at].op);
  print(`-- the power goes before step ${at + 1}: ${rec.steps[at].title}\n`, 'note');
  // Not command(): nothing can be read back for drawing while the power is out.
  print(`> write -P ${PATTERN} ${rec.offset} 4k\n`, 'cmd');
  await tools.run(`write -P ${PATTERN} ${rec.offset} 4k`);
  await tools.close();
  const seed = ++plugs;
  const crash = st.crash(seeded(seed));
  const lost = `crash (seed ${seed}): ${crash.pending} unflushed writes: ${crash.kept} kept, ${crash.torn} torn, ${crash.dropped} lost`;
  print(`-- ${lost}\n`, 'note');
  const crashed = imageLayout(st.toBytes());
  await redraw(st.toBytes());
  const checkAfterCrash = (await captured(() => command(`blk-img check ${imageName}`))).text;
  print(
    crashed?.dirty === true
      ? '-- reopen read-write: the dirty bit makes the open run the check and repair\n'
      : '-- reopen read-write: the image is not marked dirty, so the open checks nothing\n',
    'note',
  );
  const reopen = (await captured(() => openImage(imageName))).text;
  let check = await captured(() => command(`blk-img check ${imageName}`));
  let repair: string | null = null;
  if (check.r !== 0) {
    // Only leaks are expected here: qcow2 counts before it references, so a crash can leave a
    // cluster counted but unused, never one used but uncounted.
    print('-- what is left are leaks (counted, unused clusters): blk-img check -r leaks gives them back\n', 'note');
    await tools.close();
    repair = (await captured(() => command(`blk-img check -r leaks ${imageName}`))).text;
    await openImage(imageName);
    check = { r: 0, text: repair.slice(repair.lastIndexOf('Double checking')) };
  }
  const r = await command(`read -P ${PATTERN} ${rec.offset} 4k`);
  const step = `before step ${at + 1}: ${rec.steps[at].title}`;
  const flushed = rec.steps.slice(0, at).findLastIndex((s) => s.kind === 'flush') + 1;
  const durable =
    (flushed === 0 ? 'No step of this write was flushed before the cut' : `Steps 1-${flushed} were flushed before the cut: they survive whatever happens`) +
    (at > flushed ? `; steps ${flushed + 1}-${at} were not, so the crash decides what of them reached the disk` : '');
  drawAftermath($('report'), $('crashed'), { step, crash: lost, durable, crashed, checkAfterCrash, reopen, repair, finalCheck: check.text, survived: r >= 0 });
  rec = null;
  showSteps();
  $<HTMLButtonElement>('plug').disabled = true;
}

// ---- wiring ------------------------------------------------------------------------------------

let busy: Promise<void> = Promise.resolve();
/** Run page actions one after another; an error ends up in the console. */
function act(f: () => Promise<void>): () => void {
  return () => {
    busy = busy
      .then(f)
      .catch((e: unknown) => print(`${e instanceof Error ? e.message : String(e)}\n`, 'err'))
      .finally(() => {
        document.body.dataset.busy = 'false';
      });
    document.body.dataset.busy = 'true';
  };
}

$('create').addEventListener('click', act(createImage));
$('open').addEventListener('click', act(() => openImage()));
$('step').addEventListener('click', act(stepWrite));
$('next').addEventListener('click', act(nextStep));
$('plug').addEventListener('click', act(pullPlug));
$<HTMLFormElement>('console').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $<HTMLInputElement>('cmd');
  const line = input.value;
  input.value = '';
  act(async () => void (await command(line)))();
});
act(createImage)();
