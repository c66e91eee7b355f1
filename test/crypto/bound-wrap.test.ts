// KeyRing.wrapBound: a data key wrapped with named facts as its AAD opens only with every fact unchanged,
// and never as a plain wrap() (docs/backup-format.md, "Bound wraps").
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KeyRing, type WrapFacts } from '../../src/crypto/keys';

t.test('a bound wrap opens only with the same facts, in the same order, under the same key', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-bound-wrap-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ring = KeyRing.open({ dir });
  const dataKey = crypto.randomBytes(32);
  const facts: WrapFacts = [['backup', 'bk-1'], ['owner', 'alice'], ['team', ''], ['kind', 'REGULAR']];
  const { keyId, wrapped } = ring.wrapBound(dataKey, facts);
  t.same(ring.unwrapBound(keyId, wrapped, facts), dataKey, 'the same facts open it');
  const changed: Array<[string, WrapFacts]> = [
    ['a value changed', [['backup', 'bk-1'], ['owner', 'bob'], ['team', ''], ['kind', 'REGULAR']]],
    ['two facts swapped', [['owner', 'alice'], ['backup', 'bk-1'], ['team', ''], ['kind', 'REGULAR']]],
    ['a fact left out', [['backup', 'bk-1'], ['owner', 'alice'], ['kind', 'REGULAR']]],
    ['a fact added', [...facts, ['extra', '']]],
    // Without length prefixes these two would encode alike.
    ['bytes moved across a boundary', [['backup', 'bk-1o'], ['wner', 'alice'], ['team', ''], ['kind', 'REGULAR']]],
  ];
  for (const [what, other] of changed) t.throws(() => ring.unwrapBound(keyId, wrapped, other), { code: 'DATA_LOSS' }, what);
  t.throws(() => ring.unwrap(keyId, wrapped, 'backup:bk-1'), { code: 'DATA_LOSS' }, 'it is not a plain wrap');
  const plain = ring.wrap(dataKey, 'backup:bk-1');
  t.throws(() => ring.unwrapBound(plain.keyId, plain.wrapped, facts), { code: 'DATA_LOSS' }, 'nor a plain wrap a bound one');
  const newer = ring.rotate();
  t.throws(() => ring.unwrapBound(newer, wrapped, facts), { code: 'DATA_LOSS' }, 'another key does not open it');
  t.throws(() => ring.unwrapBound('kek-0000000000000000', wrapped, facts), { code: 'FAILED_PRECONDITION' }, 'a key not in the ring');
});
