// The workspace state machine, written down once. Every state change of the lifecycle goes through
// nextState(); anything not in the table is a bug of ours and is refused (INTERNAL), not persisted.
import { DomainError } from '../errors';
import type { State } from './types';

/** From each state, where the lifecycle may go (src/workspace/service.ts). */
export const TRANSITIONS: Readonly<Record<State, readonly State[]>> = {
  // create() succeeded, or a step of it failed (also a start a daemon restart interrupted).
  CREATING: ['RUNNING', 'FAILED'],
  // stop() asked; or the workload ended: a workspace STOPPED, a prebuild SUCCEEDED or FAILED.
  RUNNING: ['STOPPING', 'STOPPED', 'FAILED', 'SUCCEEDED'],
  // The workload ended after the stop signal (a prebuild that was stopped ends STOPPED too).
  STOPPING: ['STOPPED', 'FAILED', 'SUCCEEDED'],
  // Final: only teardown follows, which removes the record rather than changing its state.
  STOPPED: [],
  FAILED: [],
  SUCCEEDED: [],
};

export function canTransition(from: State, to: State): boolean {
  return TRANSITIONS[from].includes(to);
}

/** `to`, if the table allows it from `from`; else an INTERNAL error naming both. */
export function nextState(workspaceId: string, from: State, to: State): State {
  if (!canTransition(from, to)) throw new DomainError('INTERNAL', `workspace "${workspaceId}": no transition from ${from} to ${to}`);
  return to;
}
