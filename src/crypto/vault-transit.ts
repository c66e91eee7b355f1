// A client for HashiCorp Vault's Transit secrets engine, the KMS the node can seal its KEKs with: the key
// never leaves Vault, and the node sends it 32 bytes to encrypt or decrypt over HTTPS.
//   POST <origin>/v1/<mount>/encrypt/<name>  {"plaintext": b64, "associated_data": b64} -> {"data": {"ciphertext": "vault:v1:..."}}
//   POST <origin>/v1/<mount>/decrypt/<name>  {"ciphertext": "...", "associated_data": b64} -> {"data": {"plaintext": b64}}
// with the token in X-Vault-Token. associated_data needs an AEAD key type (aes256-gcm96, the default).
// https://developer.hashicorp.com/vault/api-docs/secret/transit
import https from 'node:https';
import { DomainError, type ErrorCode } from '../errors';

export interface VaultTransitOptions {
  /** The key's URL as Vault names it: https://HOST:PORT/v1/<mount>/keys/<name>. */
  keyUrl: string;
  /** Read at each call: a token file that Vault Agent renews is picked up without a restart. */
  token: () => string;
  /** PEM of the CA(s) the server's certificate must chain to; the system store is not used. */
  ca: Buffer | string;
  timeoutMs?: number;
}

const MAX_RESPONSE_BYTES = 1 << 16;

/** Splits a Vault key URL into its origin, mount and key name; null if it is not one. */
export function parseVaultKeyUrl(keyUrl: string): { origin: string; mount: string; name: string } | null {
  let url: URL;
  try {
    url = new URL(keyUrl);
  } catch {
    return null;
  }
  const m = /^\/v1\/([A-Za-z0-9_.\/-]+)\/keys\/([A-Za-z0-9_.-]+)$/.exec(url.pathname);
  if (url.protocol !== 'https:' || !m || url.search || url.hash || url.username || url.password) return null;
  if (m[1].split('/').some((p) => p === '' || p === '.' || p === '..')) return null;
  return { origin: url.origin, mount: m[1], name: m[2] };
}

export class VaultTransit {
  readonly #origin: string;
  readonly #mount: string;
  readonly #name: string;
  readonly #token: () => string;
  readonly #agent: https.Agent;
  readonly #timeoutMs: number;

  constructor(o: VaultTransitOptions) {
    const parsed = parseVaultKeyUrl(o.keyUrl);
    if (!parsed) throw new DomainError('INVALID_ARGUMENT', `kekSource: ${JSON.stringify(o.keyUrl)} is not https://HOST:PORT/v1/<mount>/keys/<name>`);
    ({ origin: this.#origin, mount: this.#mount, name: this.#name } = parsed);
    this.#token = o.token;
    this.#agent = new https.Agent({ ca: o.ca, keepAlive: true, maxSockets: 4, minVersion: 'TLSv1.2' });
    this.#timeoutMs = o.timeoutMs ?? 10_000;
  }

  /** "transit/tetrix-node": names the key without the address, which may change. */
  get keyName(): string {
    return `${this.#mount}/${this.#name}`;
  }

  async encrypt(plaintext: Buffer, aad: Buffer): Promise<string> {
    const data = await this.#post('encrypt', { plaintext: plaintext.toString('base64'), associated_data: aad.toString('base64') });
    const ciphertext = data.ciphertext;
    if (typeof ciphertext !== 'string' || !ciphertext.startsWith('vault:')) throw this.#error('INTERNAL', 'encrypt: the answer has no ciphertext');
    return ciphertext;
  }

  async decrypt(ciphertext: string, aad: Buffer): Promise<Buffer> {
    const data = await this.#post('decrypt', { ciphertext, associated_data: aad.toString('base64') });
    if (typeof data.plaintext !== 'string') throw this.#error('INTERNAL', 'decrypt: the answer has no plaintext');
    return Buffer.from(data.plaintext, 'base64');
  }

  close(): void {
    this.#agent.destroy();
  }

  #post(op: 'encrypt' | 'decrypt', body: object): Promise<Record<string, unknown>> {
    const url = new URL(`/v1/${this.#mount}/${op}/${this.#name}`, this.#origin);
    const payload = Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = https.request(url, {
        method: 'POST',
        agent: this.#agent,
        headers: { 'X-Vault-Token': this.#token(), 'Content-Type': 'application/json', 'Content-Length': payload.length },
        timeout: this.#timeoutMs,
      }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) req.destroy(this.#error('INTERNAL', `${op}: answer larger than 64 KiB`));
          else chunks.push(c);
        });
        res.on('error', reject);
        res.on('end', () => {
          try {
            resolve(this.#answer(op, res.statusCode ?? 0, Buffer.concat(chunks)));
          } catch (err) {
            reject(err);
          }
        });
      });
      req.on('timeout', () => req.destroy(this.#error('UNAVAILABLE', `${op}: no answer within ${this.#timeoutMs} ms`)));
      req.on('error', (err: NodeJS.ErrnoException) => {
        reject(err instanceof DomainError ? err : this.#error('UNAVAILABLE', `${op}: ${err.code ?? err.message}`));
      });
      req.end(payload);
    });
  }

  #answer(op: string, status: number, raw: Buffer): Record<string, unknown> {
    let json: { data?: Record<string, unknown>; errors?: unknown[] } = {};
    try {
      json = JSON.parse(raw.toString('utf8')) as typeof json;
    } catch {
      // an error page that is not JSON: reported by its status alone
    }
    if (status === 200 && json.data && typeof json.data === 'object') return json.data;
    // Vault's error texts name the failure, never the token or the plaintext; cut to keep logs tidy.
    const why = Array.isArray(json.errors) ? json.errors.map(String).join('; ').slice(0, 200) : '';
    const code = status === 403 ? 'PERMISSION_DENIED' : status === 400 && op === 'decrypt' ? 'DATA_LOSS' : status >= 500 ? 'UNAVAILABLE' : 'FAILED_PRECONDITION';
    throw this.#error(code, `${op}: HTTP ${status}${why ? ` (${why})` : ''}`);
  }

  #error(code: ErrorCode, message: string): DomainError {
    return new DomainError(code, `kms ${this.#origin} key ${this.keyName}: ${message}`);
  }
}
