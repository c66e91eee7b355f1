// execDetachedTimeoutMs: the default, a flag, and a refusal that names it.
import t from 'tap';
import { loadConfig } from '../../src/config/config';

t.test('the detached session timeout is configurable and checked', async (t) => {
  t.equal(loadConfig([]).execDetachedTimeoutMs, 5 * 60_000, 'five minutes by default');
  t.equal(loadConfig(['--exec-detached-timeout-ms', '60000']).execDetachedTimeoutMs, 60_000);
  t.throws(() => loadConfig(['--exec-detached-timeout-ms', '10']), /execDetachedTimeoutMs: must be at least 1000/);
  t.throws(() => loadConfig(['--exec-detached-timeout-ms', 'soon']), /execDetachedTimeoutMs/);
});
