// One certificate maker for the TLS interop tests: a CA, a server certificate for
// localhost/127.0.0.1 and a client certificate O=Example,CN=client1, as openssl makes them.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Writes ca-cert.pem/ca-key.pem, server-cert.pem/server-key.pem and client-cert.pem/client-key.pem
 * into dir (the names qemu's tls-creds-x509 reads). Throws with openssl's stderr if a step fails.
 */
export function makeX509Certs(dir: string, openssl = 'openssl'): void {
  const ssl = (args: string[]): void => {
    const r = spawnSync(openssl, args, { cwd: dir, encoding: 'utf8', timeout: 30_000 });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl(['req', '-x509', ...ec, '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=Test CA']);
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const [who, subj] of [
    ['server', '/O=Example/CN=localhost'],
    ['client', '/O=Example/CN=client1'],
  ]) {
    ssl(['req', ...ec, '-keyout', `${who}-key.pem`, '-out', `${who}.csr`, '-subj', subj]);
    ssl([
      'x509', '-req', '-in', `${who}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial',
      '-out', `${who}-cert.pem`, '-days', '2', '-extfile', `${who}.ext`,
    ]);
  }
}
