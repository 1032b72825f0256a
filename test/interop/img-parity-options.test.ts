// Parity with qemu-img 7.2 for QEMU's option model: --image-opts, json: filenames for every
// subcommand, file:-prefixed names with colons and relative backing files, --object, and bad
// option strings (see img-parity-harness.ts).
import { afterAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, requireQemu } from './qemu.js';
import { DATA_IMAGES, sessionDiffs, type Session } from './img-parity-harness.js';

const qemu = requireQemu();

/** a.qed's stack as options, and as a json: filename. */
const A_OPTS = 'driver=qed,file.filename=a.qed';
const A_JSON = 'json:{"driver":"qed","file":{"driver":"file","filename":"a.qed"}}';

/** A backing chain: top.qed over base.qed (relative name), and one whose name has a colon. */
const CHAIN: string[][] = [
  ['qemu-img', 'create', '-q', '-f', 'qed', 'base.qed', '1M'],
  ['qemu-io', '-f', 'qed', '-c', 'write -P 0x22 0 128k', 'base.qed'],
  ['qemu-img', 'create', '-q', '-f', 'qed', '-b', 'base.qed', '-F', 'qed', 'top.qed'],
  ['qemu-io', '-f', 'qed', '-c', 'write -P 0x33 64k 64k', 'top.qed'],
  ['sh', 'cp top.qed a:b.qed && mkdir d && cp base.qed d/base.qed && cp top.qed d/x:top.qed'],
];

const sessions: Session[] = [
  {
    name: '--image-opts: info, check, map, compare',
    setup: [...DATA_IMAGES, ...CHAIN, ['qemu-img', 'convert', '-f', 'raw', '-O', 'qed', 'a.qed', 'nested.qed']],
    steps: [
      ['info', '--image-opts', A_OPTS],
      ['info', '--output=json', '--image-opts', A_OPTS],
      ['info', '--image-opts', 'file.filename=a.qed'],
      ['info', '--image-opts', 'driver=raw,file.driver=file,file.filename=r.raw'],
      ['check', '--image-opts', A_OPTS],
      ['map', '--image-opts', A_OPTS],
      ['map', '--output=json', '--image-opts', 'driver=qed,file.filename=top.qed'],
      ['compare', '--image-opts', A_OPTS, 'driver=qed,file.filename=a.qed'],
      ['info', '--backing-chain', '--image-opts', 'driver=qed,file.filename=top.qed'],
      ['info', '--backing-chain', '--output=json', '--image-opts', 'driver=qed,file.filename=top.qed'],
      ['info', '--image-opts', 'driver=qed,file.filename=top.qed,backing=null'],
      ['info', '-U', '--image-opts', `${A_OPTS},force-share=on`],
      // A QED image stored inside a QED image: a json: name, as QEMU's refreshed filename.
      ['info', '--image-opts', 'driver=qed,file.driver=qed,file.file.filename=nested.qed'],
      ['info', '--output=json', '--image-opts', 'driver=qed,file.driver=qed,file.file.filename=nested.qed'],
      ['info', 'json:{"driver":"qed","file":{"driver":"qed","file":{"filename":"nested.qed"}}}'],
      ['compare', '-F', 'qed', '--image-opts', 'driver=qed,file.driver=qed,file.file.filename=nested.qed', 'a.qed'],
      ['bench', '-c', '16', '--image-opts', A_OPTS],
      ['bench', '-c', '16', '--image-opts', `${A_OPTS},foo=1`],
      ['dd', '--image-opts', `if=${A_OPTS}`, 'of=dd.raw', '-O', 'raw'],
      ['compare', '-f', 'qed', '-F', 'raw', 'a.qed', 'dd.raw'],
      ['convert', '--image-opts', A_OPTS, '-O', 'raw', 'c.raw'],
      ['convert', '--target-image-opts', 'a.qed', 'driver=raw,file.filename=c.raw'],
      ['convert', '-n', '--target-image-opts', '-O', 'raw', 'a.qed', 'driver=raw,file.filename=c.raw'],
      ['convert', '-n', '--target-image-opts', 'a.qed', 'driver=raw,file.filename=c.raw'],
      ['compare', '-f', 'qed', '-F', 'raw', 'a.qed', 'c.raw'],
      ['rebase', '-u', '-b', '', '--image-opts', 'driver=qed,file.filename=top.qed'],
      ['info', 'top.qed'],
      ['resize', '--image-opts', 'driver=raw,file.filename=r.raw', '2M'],
      ['commit', '--image-opts', 'driver=qed,file.filename=a.qed'],
    ],
  },
  {
    name: '--image-opts: bad option strings',
    setup: [...DATA_IMAGES, ...CHAIN],
    steps: [
      ['info', '--image-opts', `${A_OPTS},foo=bar`],
      ['info', '--image-opts', `${A_OPTS},foo=1,bar=2,baz=3,qux=4,a=5,b=6`],
      ['info', '--image-opts', `${A_OPTS},file.foo=1`],
      ['info', '--image-opts', 'driver=qed,file.driver=qed,file.file.filename=a.qed'],
      ['info', '--image-opts', 'a.qed'],
      ['info', '--image-opts', 'driver=qed,,file.filename=x'],
      ['info', '--image-opts', 'driver=qed,=x'],
      ['info', '--image-opts', 'driver=qed'],
      ['info', '--image-opts', 'filename=a.qed'],
      ['info', '--image-opts', 'driver=bogus,file.filename=a.qed'],
      ['info', '--image-opts', 'driver=qed,file=a.qed'],
      ['info', '--image-opts', `${A_OPTS},read-only=x`],
      ['info', '--image-opts', `${A_OPTS},discard=x`],
      ['info', '--image-opts', `${A_OPTS},detect-zeroes=x`],
      ['info', '--image-opts', `${A_OPTS},noflag`],
      ['info', '--image-opts', `id=x,${A_OPTS}`],
      ['info', '--image-opts', `id=1x,${A_OPTS}`],
      ['info', '--image-opts', 'driver=qed,file.filename=top.qed,backing.driver=raw'],
      ['info', '--image-opts', 'driver=qed,file.filename=nothere.qed'],
      ['info', '-U', '--image-opts', `${A_OPTS},force-share=off`],
      ['info', '-f', 'qed', '--image-opts', A_OPTS],
      ['compare', '-f', 'qed', '--image-opts', A_OPTS, A_OPTS],
      ['compare', '--image-opts', A_OPTS, 'a.qed'],
    ],
  },
  {
    name: 'json: filenames for every subcommand',
    setup: [...DATA_IMAGES, ...CHAIN],
    steps: [
      ['info', A_JSON],
      ['info', 'json:{"driver":"qed","file.filename":"a.qed"}'],
      ["info", "json:{'file':{'filename':'a.qed'}}"],
      ['info', '--backing-chain', 'json:{"driver":"qed","file":{"filename":"top.qed"}}'],
      ['check', A_JSON],
      ['map', A_JSON],
      ['map', '--output=json', A_JSON],
      ['compare', A_JSON, 'a.qed'],
      ['compare', A_JSON, 'json:{"driver":"raw","file":{"filename":"r.raw"}}'],
      ['convert', '-O', 'raw', A_JSON, 'out.raw'],
      ['compare', '-f', 'qed', '-F', 'raw', 'a.qed', 'out.raw'],
      ['resize', 'json:{"driver":"raw","file":{"filename":"r.raw"}}', '2M'],
      ['info', '-f', 'raw', 'r.raw'],
      ['rebase', '-u', '-b', 'base.qed', '-F', 'qed', 'json:{"driver":"qed","file":{"filename":"a.qed"}}'],
      ['info', 'a.qed'],
      ['create', '-f', 'qed', A_JSON, '1M'],
      // A json: backing file name: recorded as given, printed with its commas doubled.
      ['create', '-f', 'qed', '-b', 'json:{"driver":"qed","file":{"filename":"base.qed"}}', '-F', 'qed', 'j.qed'],
      ['info', '--backing-chain', 'j.qed'],
      ['map', 'j.qed'],
      ['compare', 'j.qed', 'base.qed'],
    ],
    images: ['a.qed'],
  },
  {
    name: 'json: filenames: bad JSON and bad options',
    setup: [...DATA_IMAGES],
    steps: [
      ['info', 'json:{"driver":"qed"'],
      ['info', 'json:[1]'],
      ['info', 'json:"x"'],
      ['info', 'json:'],
      ['info', 'json:{"a":}'],
      ['info', 'json:{"a" 1}'],
      ['info', 'json:{a:1}'],
      ['info', 'json:{"a":1}x'],
      ['info', 'json:{"a":@}'],
      ['info', 'json:{"a":01}'],
      ['info', 'json:{"a":"\\q"}'],
      ['info', `json:{"driver":"qed","file":{"filename":"a.qed"},"foo":1}`],
      ['info', `json:{"driver":"qed","file":{"filename":"a.qed","x":[1,2]}}`],
      ['info', `json:{"driver":"qed","file":{"filename":"a.qed","x":{}}}`],
      ['info', `json:{"driver":"qed","file":{"filename":"a.qed"},"read-only":1}`],
      ['info', `json:{"driver":"qed","file":"a.qed"}`],
      ['check', 'json:{"driver":"qed"'],
      ['map', 'json:[1]'],
    ],
  },
  {
    name: 'file:-prefixed names with colons, relative backing files',
    setup: [...CHAIN],
    steps: [
      ['info', 'a:b.qed'],
      ['info', 'file:a:b.qed'],
      ['info', '--backing-chain', 'file:a:b.qed'],
      ['info', '--backing-chain', 'd/x:top.qed'],
      ['info', '--backing-chain', 'file:d/x:top.qed'],
      ['info', '--backing-chain', './d/x:top.qed'],
      ['info', '--backing-chain', '--output=json', 'file:a:b.qed'],
      ['check', 'file:a:b.qed'],
      ['map', 'file:a:b.qed'],
      ['compare', 'file:a:b.qed', 'top.qed'],
      ['info', 'json:{"driver":"qed","file":{"driver":"file","filename":"d/x:top.qed"}}'],
      ['info', 'nosuchproto:x.qed'],
    ],
  },
  {
    name: '--object',
    setup: [...DATA_IMAGES, ['sh', 'printf topsecret > sec.txt']],
    steps: [
      ['info', '--object', 'secret,id=sec0,data=abc', 'a.qed'],
      ['info', '--object', 'secret,id=sec0,file=sec.txt', 'a.qed'],
      ['info', '--object', '{"qom-type":"secret","id":"s","data":"x"}', '--image-opts', A_OPTS],
      ['check', '--object', 'secret,id=sec0,data=YWJj,format=base64', 'a.qed'],
      ['map', '--object', 'secret,id=s,data=a,,b', 'a.qed'],
      ['create', '--object', 'secret,id=s,data=x', '-f', 'qed', 'n.qed', '1M'],
      ['info', '--object', 'secret,id=sec0,file=nothere', 'a.qed'],
      ['info', '--object', 'secret,id=sec0', 'a.qed'],
      ['info', '--object', 'secret,data=abc', 'a.qed'],
      ['info', '--object', 'secret,id=sec0,data=abc,file=sec.txt', 'a.qed'],
      ['info', '--object', 'secret,id=sec0,data=abc,format=x', 'a.qed'],
      ['info', '--object', 'secret,id=sec0,data=abc,foo=1', 'a.qed'],
      ['info', '--object', 'secret,id=sec0,data=abc', '--object', 'secret,id=sec0,data=x', 'a.qed'],
      ['info', '--object', 'bogus,id=x', 'a.qed'],
      ['info', '--object', 'id=x', 'a.qed'],
      ['info', '--object', 'secret,id=1x,data=a', 'a.qed'],
      ['info', '--object', 'secret,id=s,data', 'a.qed'],
      ['info', '--object', 'secret,id=s,data=a,keyid=k', 'a.qed'],
      ['compare', '--object', 'secret,id=s', 'a.qed', 'a.qed'],
    ],
  },
];

describe.skipIf(!qemu)('blk-img parity with qemu-img 7.2: --image-opts, json:, file: names, --object', () => {
  const root = makeTempDir('img-parity-options');
  afterAll(() => removeTempDir(root));
  for (const s of sessions) {
    it(s.name, async () => {
      expect(await sessionDiffs(root, s)).toEqual([]);
    });
  }
});
