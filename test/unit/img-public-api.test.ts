// The tools are clients of the package: everything they take from the library comes through
// its public entry (src/index.ts), never from a file of the block layer or of a driver.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const TOOLS = join(import.meta.dirname, '../../src/tools');

function toolFiles(): string[] {
  return readdirSync(TOOLS, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .flatMap((d) => readdirSync(join(TOOLS, d.name)).filter((f) => f.endsWith('.ts')).map((f) => join(d.name, f)));
}

describe('the tools use the public API only', () => {
  it('import nothing from src/ but src/index.ts', () => {
    const files = toolFiles();
    expect(files.length).toBeGreaterThan(20);
    const outside: string[] = [];
    for (const f of files) {
      const text = readFileSync(join(TOOLS, f), 'utf8');
      for (const m of text.matchAll(/from '(\.\.\/\.\.\/[^']*)'|import '(\.\.\/\.\.\/[^']*)'/g)) {
        const spec = m[1] ?? m[2];
        if (spec !== '../../index.js') outside.push(`${f}: ${spec}`);
      }
    }
    expect(outside).toEqual([]);
  });
});
