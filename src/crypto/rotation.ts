// Key rotation to the end: a new KEK, everything sealed under the old ones re-wrapped onto it, and an old
// KEK deleted once nothing depends on it. What depends on a key is counted by each kind of sealed data
// (backups, sealed fields of the state database, logs); main.ts wires them, so this module imports none.
import { DomainError } from '../errors';
import type { KeyRing } from './keys';

export type DependentKind = 'backup' | 'secret' | 'log';

/** One kind of data sealed under the node's KEKs. */
export interface KeyDependents {
  readonly kind: DependentKind;
  /** key id -> how many items of this kind are sealed (or wrapped) under it. */
  usage(): Promise<Map<string, number>>;
  /** Re-seals every item onto the current key; returns how many changed. */
  rewrap(currentKeyId: string): Promise<number>;
}

export interface RotateRequest {
  /** Make a fresh KEK current first. */
  newKey: boolean;
  /** Re-wrap everything onto the current key. */
  rewrap: boolean;
  /** Delete these keys; refused (FAILED_PRECONDITION, with the counts) while anything depends on one. */
  retire: string[];
}

export interface KeyUse {
  keyId: string;
  kind: DependentKind;
  count: number;
}

export interface RotateOutcome {
  keyId: string;
  rewrapped: Record<DependentKind, number>;
  retired: string[];
  /** What depends on each key after the call, by kind (zero counts left out). */
  usage: KeyUse[];
  keyIds: string[];
}

export class KeyRotation {
  #chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly keyring: KeyRing, private readonly dependents: readonly KeyDependents[]) {}

  /** One rotation at a time: a retire must not race the re-wrap that frees its key. */
  run(req: RotateRequest): Promise<RotateOutcome> {
    const next = this.#chain.then(() => this.#run(req));
    this.#chain = next.catch(() => undefined);
    return next;
  }

  async usage(): Promise<KeyUse[]> {
    const out: KeyUse[] = [];
    for (const d of this.dependents) {
      for (const [keyId, count] of await d.usage()) if (count > 0) out.push({ keyId, kind: d.kind, count });
    }
    return out.sort((a, b) => (a.keyId === b.keyId ? a.kind.localeCompare(b.kind) : a.keyId.localeCompare(b.keyId)));
  }

  async #run(req: RotateRequest): Promise<RotateOutcome> {
    for (const id of req.retire) {
      if (!this.keyring.has(id)) throw new DomainError('NOT_FOUND', `retire_key_ids: ${id} is not in this node's keyring`);
    }
    // Without a re-wrap nothing can free a key, so a refusal comes before any change (no new key left behind).
    if (!req.rewrap) for (const id of req.retire) await this.#refuseIfUsed(id, []);
    if (req.newKey) await this.keyring.rotateKey();
    const current = this.keyring.current().id;
    if (req.retire.includes(current)) throw new DomainError('FAILED_PRECONDITION', `retire_key_ids: ${current} is the current key`);
    const rewrapped: Record<DependentKind, number> = { backup: 0, secret: 0, log: 0 };
    if (req.rewrap) {
      for (const d of this.dependents) rewrapped[d.kind] += await d.rewrap(current);
    }
    const retired: string[] = [];
    for (const id of req.retire) {
      // Counted again right before the delete: what was sealed since the re-wrap counts too.
      await this.#refuseIfUsed(id, retired);
      this.keyring.retire(id);
      retired.push(id);
    }
    return { keyId: current, rewrapped, retired, usage: await this.usage(), keyIds: this.keyring.ids() };
  }

  async #refuseIfUsed(id: string, retired: string[]): Promise<void> {
    const left = (await this.usage()).filter((u) => u.keyId === id);
    if (left.length === 0) return;
    throw new DomainError('FAILED_PRECONDITION',
      `retire_key_ids: ${id} still protects ${left.map((u) => `${u.count} ${u.kind}${u.count === 1 ? '' : 's'}`).join(', ')}; rotate with rewrap first`
      + (retired.length ? ` (retired before this: ${retired.join(', ')})` : ''));
  }
}
