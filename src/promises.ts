// Small promise helpers shared across layers.

/** Like Promise.all, but waits for every task to settle before rejecting with the first failure, so no
 *  half-done step races the cleanup of a failed one. */
export async function allSettledOrThrow<T extends readonly unknown[]>(tasks: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const settled = await Promise.allSettled(tasks);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

/**
 * A gate that lets callers through at most `perTurn` per event-loop turn. grpc-js hands the daemon every
 * call of one socket read in a single turn (200 StartWorkspace calls: one 70 ms block); behind the gate
 * their work is spread over turns, with I/O, and so other clients' calls, served between.
 */
export function turnGate(perTurn: number): () => Promise<void> {
  const waiting: Array<() => void> = [];
  const release = (): void => {
    for (const pass of waiting.splice(0, perTurn)) pass();
    // Scheduled from the check phase, the next batch runs in the next turn, after the poll.
    if (waiting.length > 0) setImmediate(release);
  };
  return () =>
    new Promise<void>((resolve) => {
      if (waiting.push(resolve) === 1) setImmediate(release);
    });
}

/**
 * fn over items with at most `depth` calls in flight, yielded in order: reads of storage objects one
 * after the other pay one round trip each (an S3 GET, a thread-pool hop for a file).
 */
export async function* readAhead<I, T>(items: Iterable<I>, depth: number, fn: (item: I) => Promise<T>): AsyncGenerator<T> {
  const it = items[Symbol.iterator]();
  const ahead: Promise<T>[] = [];
  const fill = (): void => {
    while (ahead.length < depth) {
      const next = it.next();
      if (next.done) return;
      const p = fn(next.value);
      p.catch(() => undefined); // awaited below in its turn; a reader that stops early leaves it unread
      ahead.push(p);
    }
  };
  fill();
  while (ahead.length) {
    const value = await ahead.shift()!;
    fill();
    yield value;
  }
}
