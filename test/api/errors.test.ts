// The one status mapping: a native failure outside the start path reaches the client as INTERNAL naming
// its step and errno, never as UNKNOWN and never with a stack.
import t from 'tap';
import { status } from '@grpc/grpc-js';
import pino from 'pino';
import { toServiceError } from '../../src/api/errors';
import { NativeError } from '../../src/native';

t.test('a NativeError becomes INTERNAL with its step and errno, and no stack', async (t) => {
  const err = new NativeError('umount /x', 16, 'EBUSY');
  const out = toServiceError(err, pino({ level: 'silent' }), 'TeardownWorkspace');
  t.equal(out.code, status.INTERNAL);
  t.equal(out.details, 'umount /x: EBUSY (errno 16)');
  t.notMatch(out.details ?? '', /at |\.ts:|\n/, 'no stack frames');
});

t.test('anything else unexpected stays UNKNOWN with no detail', async (t) => {
  const out = toServiceError(new Error('secret path /root/x'), pino({ level: 'silent' }), 'GetWorkspace');
  t.equal(out.code, status.UNKNOWN);
  t.equal(out.details, 'internal error');
});
