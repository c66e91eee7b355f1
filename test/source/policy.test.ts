// Where a fetch may connect (src/source/fetch-proxy.ts), and what a failure tells a client
// (src/source/checkout.ts): no destination on the node or among its workspaces, no token in a message.
import t from 'tap';
import os from 'node:os';
import { EgressPolicy } from '../../src/source/fetch-proxy';
import { classify, gitEnvironment, scrub } from '../../src/source/checkout';
import { NO_GIT } from '../../src/source/spec';

t.test('the deny list', async (t) => {
  const policy = new EgressPolicy({ deniedCidrs: ['10.88.0.0/16', '192.0.2.0/24'], allowed: ['127.0.0.1:4242'] });
  const nodeAddress = Object.values(os.networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
  const refused = ['127.0.0.1', '127.1.2.3', '::1', '0.0.0.0', '169.254.169.254', '100.100.100.200', '10.88.3.4', '192.0.2.9', 'fe80::1', '224.0.0.1', ...(nodeAddress ? [nodeAddress] : [])];
  for (const host of refused) await t.rejects(policy.resolve(host, 443), { name: 'EgressRefused' }, `${host} refused`);
  await t.rejects(policy.resolve('localhost', 443), { name: 'EgressRefused' }, 'a name resolving to loopback is refused');
  t.same(await policy.resolve('127.0.0.1', 4242), { address: '127.0.0.1', family: 4 }, 'an operator exception: exactly that address and port');
  await t.rejects(policy.resolve('127.0.0.1', 4243), { name: 'EgressRefused' }, 'not another port');
  t.same(await policy.resolve('203.0.113.7', 443), { address: '203.0.113.7', family: 4 }, 'an outside address passes');
});

t.test('the token never reaches a message, and git gets it only as a header scoped to the origin', async (t) => {
  const token = 'ghp_secretvalue123';
  const basic = Buffer.from(`x-access-token:${token}`).toString('base64');
  const failure = classify({ exitCode: 128, signal: '', stdout: '', stderr: `fatal: Authentication failed for 'https://h/r.git' (${token} ${basic})\n`, timedOut: false, bytesIn: 0, refused: 0, unreachable: '' }, token);
  t.equal(failure.code, 'PERMISSION_DENIED');
  t.notOk(failure.message.includes(token) || failure.message.includes(basic));
  t.equal(scrub(`a ${token} b ${basic}`, token), 'a *** b ***');
  const env = gitEnvironment({ ...NO_GIT, url: 'https://git.example.test:8443/acme/app.git', token }, false);
  const keys = Object.entries(env).filter(([k]) => k.startsWith('GIT_CONFIG_KEY_'));
  const header = keys.find(([, v]) => v.endsWith('.extraHeader'));
  t.equal(header?.[1], 'http.https://git.example.test:8443/.extraHeader', 'scoped to the remote\'s origin');
  t.equal(env[header![0].replace('KEY', 'VALUE')], `Authorization: Basic ${basic}`);
  t.equal(env.GIT_ALLOW_PROTOCOL, 'https:http:git');
  t.ok(keys.some(([k, v]) => v === 'core.hooksPath' && env[k.replace('KEY', 'VALUE')] === '/dev/null'), 'no hooks');
});
