// --object: keyval and JSON definitions, the secret type, the table's checks (QEMU 7.2 messages).
import { describe, expect, it } from 'vitest';
import { BlockError, ObjectTable, parseObjectDefinition, type SecretObject, type UserObjectType } from '../../src/block/index.js';

function addMessage(table: ObjectTable, text: string, readFile?: (p: string) => Uint8Array): string {
  try {
    table.add(parseObjectDefinition(text), { readFile });
  } catch (e) {
    expect(e).toBeInstanceOf(BlockError);
    return (e as BlockError).message;
  }
  throw new Error('expected the object to be refused');
}

describe('--object definitions', () => {
  it('parses keyval with the implied qom-type and ,, escapes, or JSON', () => {
    expect([...parseObjectDefinition('secret,id=s,data=a,,b').entries()]).toEqual([
      ['qom-type', 'secret'],
      ['id', 's'],
      ['data', 'a,b'],
    ]);
    expect([...parseObjectDefinition('{"qom-type":"secret","id":"s","data":"x"}').entries()]).toEqual([
      ['qom-type', 'secret'],
      ['id', 's'],
      ['data', 'x'],
    ]);
    expect(() => parseObjectDefinition('secret,id=s,data')).toThrow("Expected '=' after parameter 'data'");
  });

  it('makes secrets from data= and file=, decoding base64', async () => {
    const t = new ObjectTable();
    t.add(parseObjectDefinition('secret,id=a,data=abc'));
    t.add(parseObjectDefinition('secret,id=b,data=YWJj,format=base64'));
    t.add(parseObjectDefinition('secret,id=c,file=/k'), { readFile: () => new TextEncoder().encode('key') });
    const text = (id: string): string => new TextDecoder().decode(t.get<SecretObject>(id, 'secret')?.data);
    expect([text('a'), text('b'), text('c')]).toEqual(['abc', 'abc', 'key']);
    expect(t.get('a', 'tls-creds-x509')).toBeUndefined();
  });

  it.each([
    ['secret,id=s', "Either 'file' or 'data' must be provided"],
    ['secret,data=abc', "Parameter 'id' is missing"],
    ['secret,id=s,data=a,file=f', "'file' and 'data' are mutually exclusive"],
    ['secret,id=s,data=a,format=x', "Parameter 'format' does not accept value 'x'"],
    ['secret,id=s,data=a,foo=1', "Parameter 'foo' is unexpected"],
    ['bogus,id=x', "Parameter 'qom-type' does not accept value 'bogus'"],
    ['id=x', "Parameter 'qom-type' is missing"],
    ['', "Parameter 'qom-type' is missing"],
    ['secret,id=1x,data=a', "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter."],
    ['secret,id=s,data=a,keyid=k', "No secret with id 'k'"],
  ])('refuses %j', (text, msg) => {
    expect(addMessage(new ObjectTable(), text)).toBe(msg);
  });

  it('refuses a duplicate id and an unreadable file', async () => {
    const t = new ObjectTable();
    t.add(parseObjectDefinition('secret,id=sec0,data=abc'));
    expect(addMessage(t, 'secret,id=sec0,data=x')).toBe("attempt to add duplicate property 'sec0' to object (type 'container')");
    const missing = (): Uint8Array => {
      throw new BlockError('ENOENT');
    };
    expect(addMessage(t, 'secret,id=s2,file=nothere', missing)).toBe(
      'Unable to read nothere: Failed to open file \u201cnothere\u201d: No such file or directory',
    );
  });

  it('takes new object types (TLS credentials later)', async () => {
    const tls: UserObjectType = {
      typeName: 'tls-creds-psk',
      properties: [{ name: 'dir', type: 'string' }],
      create(id, props) {
        return { id, dir: props.get('dir') };
      },
    };
    const t = new ObjectTable().registerType(tls);
    t.add(parseObjectDefinition('tls-creds-psk,id=t0,dir=/keys'));
    expect(t.get('t0', 'tls-creds-psk')).toEqual({ id: 't0', dir: '/keys' });
    expect(t.typeNames()).toEqual(['secret', 'tls-creds-psk']);
  });
});
