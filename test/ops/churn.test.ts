// CI's short soak: about 100 workspaces started, stopped and torn down, four at a time, in every way a
// workspace ends; afterwards the machine holds nothing of them and the daemon no extra descriptor.
// The long run with the memory check is bench/soak (1,000+ cycles); this asserts leaks, not timing.
import t from 'tap';
import { launchDaemon } from '../../bench/lib/launcher';
import { describeLeaks } from '../../bench/lib/leaks';
import { runChurn } from '../../bench/soak/churn';

const CYCLES = 100;
const PARALLEL = 4;
const FD_SLACK = 4;

t.test(`${CYCLES} workspaces churned ${PARALLEL} at a time leave nothing behind`, async (t) => {
  const d = await launchDaemon({ prefix: 'tetrix-churn' });
  t.teardown(() => d.shutdown());
  const r = await runChurn(d, { cycles: CYCLES, parallel: PARALLEL });
  t.equal(r.cycles, CYCLES, `all ${CYCLES} cycles ran`);
  t.same(r.errors, [], 'every cycle ended the way it should');
  t.same(r.remainingRecords, [], 'ListWorkspaces is empty');
  const leaks = describeLeaks(r.leaks);
  t.equal(leaks, 'none', `no mount, cgroup, netns, link, nft element, process, uid claim, lease or workspace directory is left (${leaks})`);
  t.ok(Math.abs(r.fdEnd - r.fdBaseline) <= FD_SLACK, `the daemon's open fds are back to the baseline (${r.fdBaseline} -> ${r.fdEnd})`);
});
