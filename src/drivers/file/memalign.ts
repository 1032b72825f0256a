/**
 * qemu_memalign for buffers that host-file I/O moves large amounts through (convert's chunks):
 * a zeroed buffer that starts on a page boundary in memory. The kernel copies page-cache data
 * to and from user memory page by page; Node's large ArrayBuffers start 16 bytes into a page
 * (malloc's block header), which makes every page copy two partial, misaligned ones (about
 * 0.2 s more system time per 512 MiB copied; native/memalign.c). Without the addon, a plain
 * buffer: the same bytes, only copied more slowly.
 */
import { seekAddon } from './seek.js';

/** QEMU's opt_mem_alignment for a host file: the page size (4 KiB on every host we run on). */
export const MEM_ALIGN = 4096;

/** `size` zeroed bytes starting on an `align`-byte boundary (a power of two) when possible. */
export function qemuMemalign(size: number, align: number = MEM_ALIGN): Uint8Array {
  const memOffset = seekAddon()?.memOffset;
  if (memOffset === undefined) return new Uint8Array(size);
  // One alignment more than asked, cut where the memory reaches the boundary.
  const raw = new Uint8Array(size + align);
  const skip = (align - memOffset(raw, align)) & (align - 1);
  return raw.subarray(skip, skip + size);
}
