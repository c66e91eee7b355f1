// The addon is checked once at load: a .node built from older sources names the part it lacks.
import t from 'tap';
import { checkParts, native, NATIVE_PARTS } from '../../src/native';

t.test('the built addon has every part the daemon uses', async (t) => {
  t.doesNotThrow(() => checkParts(native as unknown as Record<string, unknown>));
});

t.test('an addon without its network part is refused at load, naming the part and the rebuild', async (t) => {
  const withoutNet: Record<string, unknown> = { ...native };
  for (const fn of Object.keys(NATIVE_PARTS.net.functions)) delete withoutNet[fn];
  t.throws(() => checkParts(withoutNet), /net \(native\/net\.c: netEnsureBridge, .*rebuild with node-gyp rebuild -C native/);
});

t.test('a missing constant is named too', async (t) => {
  const withoutConst: Record<string, unknown> = { ...native, constants: { ...native.constants, STDOUT_READ_FD: undefined } };
  t.throws(() => checkParts(withoutConst), /output \(native\/output\.c: constants\.STDOUT_READ_FD\)/);
});
