/**
 * `npm run fuzz -- --seed N --runs M [--only NAME[,NAME...]] [--format qed|qcow2] [--narrow]`:
 * every property, longer and with wider geometries than in `npm test`, for each format whose
 * driver is registered (or the one named). Prints the seed, the number of guest commands run
 * per property, and fast-check's report (with the shrunk counterexample) for any failure.
 * Exit status 1 when a property failed.
 */
import { defaultRegistry } from '../../src/index.js';
import { PROFILES, profileByName } from './formats.js';
import type { FormatProfile } from './profile.js';
import { mapStats } from './commands.js';
import { concStats } from './concurrency.js';
import { corruptStats } from './corruption.js';
import { faultStats } from './fault-props.js';
import { snapshotStats } from './snapshot-cmds.js';
import { snapshotPowerLossStats } from './snapshot-powerloss.js';
import { gatedRequests } from './sched-protocol.js';
import { submitStats } from './submit-stats.js';
import { ALL_PROPERTIES } from './properties.js';
import { qcow2ProfileStats } from './qcow2-profile.js';

function usage(): never {
  console.error('usage: npm run fuzz -- [--seed N] [--runs M] [--only NAME,...] [--format qed|qcow2] [--narrow]');
  console.error(`properties: ${Object.keys(ALL_PROPERTIES).join(', ')}`);
  process.exit(2);
}

interface FuzzArgs {
  seed: number;
  runs: number;
  only: string[] | null;
  wide: boolean;
  formats: FormatProfile[];
}

function parseArgs(argv: string[]): FuzzArgs {
  let seed = Date.now() % 0x7fffffff;
  let runs = 200;
  let only: string[] | null = null;
  let wide = true;
  let format: FormatProfile | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = (): string => {
      const v = argv[++i];
      if (v === undefined) usage();
      return v;
    };
    if (a === '--seed') seed = Number(val());
    else if (a === '--runs') runs = Number(val());
    else if (a === '--only') only = val().split(',');
    else if (a === '--narrow') wide = false;
    else if (a === '--format') format = profileByName(val()) ?? usage();
    else if (a === '--help' || a === '-h') usage();
    else usage();
  }
  if (!Number.isSafeInteger(seed) || !Number.isSafeInteger(runs) || runs < 1) usage();
  for (const n of only ?? []) if (!(n in ALL_PROPERTIES)) usage();
  // Default: every format whose driver is registered.
  const formats = format ? [format] : Object.values(PROFILES).filter((p) => defaultRegistry.find(p.name) !== undefined);
  if (format && !defaultRegistry.find(format.name)) {
    console.error(`fuzz: no ${format.name} driver is registered`);
    process.exit(2);
  }
  return { seed, runs, only, wide, formats };
}

async function main(): Promise<void> {
  const { seed, runs, only, wide, formats } = parseArgs(process.argv.slice(2));
  console.log(`fuzz: seed ${seed}, ${runs} runs per property${wide ? ', wide geometries' : ''}, formats ${formats.map((f) => f.name).join(', ')}`);
  let failed = 0;
  let total = 0;
  for (const format of formats) {
    for (const [name, prop] of Object.entries(ALL_PROPERTIES)) {
      if (only && !only.includes(name)) continue;
      let commands = 0;
      const t0 = Date.now();
      try {
        await prop({ seed, numRuns: runs, wide, format, onCommands: (n) => (commands += n) });
        console.log(`  ${format.name} ${name}: ok, ${runs} runs, ${commands} commands, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      } catch (e) {
        failed++;
        console.log(`  ${format.name} ${name}: FAILED after ${commands} commands (seed ${seed})`);
        console.log(e instanceof Error ? e.message : String(e));
        const cause = e instanceof Error ? e.cause : undefined;
        if (cause instanceof Error) console.log(`cause: ${cause.stack ?? cause.message}`);
      }
      total += commands;
    }
  }
  console.log(
    `fault stats: ${JSON.stringify(faultStats)}, concurrency: ${JSON.stringify(concStats)}, corruption: ${JSON.stringify(corruptStats)}, gated I/O: ${gatedRequests}, map: ${JSON.stringify(mapStats)}, snapshots: ${JSON.stringify({ ...snapshotStats, powerloss: snapshotPowerLossStats })}, qcow2 images with extended L2: ${qcow2ProfileStats.extendedL2Images}, callback writes: ${JSON.stringify(submitStats)}`,
  );
  console.log(`fuzz: seed ${seed}, ${total} commands in total, ${failed} propert${failed === 1 ? 'y' : 'ies'} failed`);
  process.exitCode = failed > 0 ? 1 : 0;
}

await main();
