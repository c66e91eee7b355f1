// The workspace state machine: the lifecycle's transitions, and an illegal one refused.
import t from 'tap';
import { DomainError } from '../../src/errors';
import { canTransition, nextState, TRANSITIONS } from '../../src/workspace/states';

t.test('a workspace goes CREATING -> RUNNING -> STOPPING -> STOPPED, or FAILED', async (t) => {
  t.equal(nextState('w', 'CREATING', 'RUNNING'), 'RUNNING');
  t.equal(nextState('w', 'CREATING', 'FAILED'), 'FAILED');
  t.equal(nextState('w', 'RUNNING', 'STOPPING'), 'STOPPING');
  t.equal(nextState('w', 'STOPPING', 'STOPPED'), 'STOPPED');
  t.ok(canTransition('RUNNING', 'SUCCEEDED'), 'a prebuild that passed');
});

t.test('an illegal transition is refused as INTERNAL, naming both states', async (t) => {
  let caught: unknown;
  try {
    nextState('w1', 'STOPPED', 'RUNNING');
  } catch (err) {
    caught = err;
  }
  t.ok(caught instanceof DomainError, 'a DomainError');
  t.equal((caught as DomainError).code, 'INTERNAL');
  t.match((caught as DomainError).message, /w1.*STOPPED to RUNNING/);
  t.notOk(canTransition('CREATING', 'STOPPING'), 'nothing to stop before it runs');
  t.notOk(canTransition('FAILED', 'FAILED'), 'a final state is final');
  for (const final of ['STOPPED', 'FAILED', 'SUCCEEDED'] as const) t.same(TRANSITIONS[final], [], `${final} leads nowhere`);
});
