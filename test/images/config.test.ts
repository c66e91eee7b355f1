// The image settings of tetrixd's config: checked at start, with messages naming the setting.
import t from 'tap';
import { loadConfig, registryMirrorsOf } from '../../src/config/config';

t.test('registry settings', async (t) => {
  const c = loadConfig(['--state-dir', '/tmp/tetrix-images-config', '--default-registry', 'reg.example:5000', '--insecure-registry', '127.0.0.1:5000',
    '--registry-mirrors', 'docker.io=m1.example:5000,docker.io=m2.example', '--user-registries', 'reg.example:5000,docker.io'], {});
  t.equal(c.defaultRegistry, 'reg.example:5000');
  t.same([...registryMirrorsOf(c.registryMirrors)], [['docker.io', ['m1.example:5000', 'm2.example']]], 'mirrors in order');
  t.throws(() => loadConfig(['--default-registry', 'https://reg.example'], {}), /defaultRegistry: expected host\[:port\]/);
  t.throws(() => loadConfig(['--insecure-registry', 'reg.example'], {}), /insecureRegistry: expected host:port/);
  t.throws(() => loadConfig(['--registry-mirrors', 'docker.io'], {}), /registryMirrors: expected REGISTRY=MIRROR/);
  t.throws(() => loadConfig(['--user-registries', 'a b'], {}), /userRegistries: expected host\[:port\]/);
  t.throws(() => loadConfig(['--registry-auth-file', 'relative.json'], {}), /registryAuthFile: must be an absolute path/);
});
