// A small Vault Transit server for tests: HTTPS with a certificate from a CA made for the run, the token
// in X-Vault-Token, and the real encrypt/decrypt JSON API (AES-256-GCM with associated_data), so the
// daemon's KMS client is exercised as it would talk to Vault. Listens on 127.0.0.1 only.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createCertificateAuthority, issueCertificate } from '../../src/crypto/pki';

export interface VaultDouble {
  /** https://127.0.0.1:PORT/v1/transit/keys/<name> */
  keyUrl: string;
  token: string;
  caFile: string;
  /** A 0600 file holding the token. */
  tokenFile: string;
  /** Requests by path, with the status answered. */
  requests: { path: string; status: number }[];
  close(): Promise<void>;
}

export async function startVaultDouble(t: { teardown(fn: () => unknown): void }, name = 'tetrix-node'): Promise<VaultDouble> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-vault-'));
  const ca = await createCertificateAuthority(`vault-test-ca-${process.pid}`);
  const leaf = await issueCertificate(ca, { commonName: '127.0.0.1', usage: 'server', ipAddresses: ['127.0.0.1'] });
  const caFile = path.join(dir, 'ca.pem');
  fs.writeFileSync(caFile, ca.certPem);
  const token = `hvs.${crypto.randomBytes(18).toString('base64url')}`;
  const tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  const key = crypto.randomBytes(32);
  const requests: VaultDouble['requests'] = [];

  const server = https.createServer({ key: leaf.keyPem, cert: leaf.certPem }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const answer = (status: number, body: object): void => {
        requests.push({ path: req.url ?? '', status });
        res.writeHead(status, { 'Content-Type': 'application/json' }).end(JSON.stringify(body));
      };
      const m = /^\/v1\/transit\/(encrypt|decrypt)\/([A-Za-z0-9_.-]+)$/.exec(req.url ?? '');
      if (req.method !== 'POST' || !m) return answer(404, { errors: [] });
      if (req.headers['x-vault-token'] !== token) return answer(403, { errors: ['permission denied'] });
      if (m[2] !== name) return answer(400, { errors: ['encryption key not found'] });
      let body: { plaintext?: string; ciphertext?: string; associated_data?: string };
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof body;
      } catch {
        return answer(400, { errors: ['failed to parse JSON input'] });
      }
      const aad = Buffer.from(body.associated_data ?? '', 'base64');
      if (m[1] === 'encrypt') {
        const nonce = crypto.randomBytes(12);
        const cipher = crypto.createCipheriv('aes-256-gcm', key, nonce).setAAD(aad);
        const ct = Buffer.concat([cipher.update(Buffer.from(body.plaintext ?? '', 'base64')), cipher.final(), cipher.getAuthTag()]);
        return answer(200, { data: { ciphertext: `vault:v1:${Buffer.concat([nonce, ct]).toString('base64')}`, key_version: 1 } });
      }
      const blob = Buffer.from((body.ciphertext ?? '').replace(/^vault:v1:/, ''), 'base64');
      try {
        const decipher = crypto.createDecipheriv('aes-256-gcm', key, blob.subarray(0, 12)).setAAD(aad);
        decipher.setAuthTag(blob.subarray(blob.length - 16));
        const plain = Buffer.concat([decipher.update(blob.subarray(12, blob.length - 16)), decipher.final()]);
        return answer(200, { data: { plaintext: plain.toString('base64') } });
      } catch {
        return answer(400, { errors: ['cipher: message authentication failed'] });
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const close = (): Promise<void> => new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
  t.teardown(async () => {
    await close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { keyUrl: `https://127.0.0.1:${port}/v1/transit/keys/${name}`, token, caFile, tokenFile, requests, close };
}
