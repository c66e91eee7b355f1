// The prune race (docs/backup-format.md, "Garbage collection and the prune race"): a backup holds its
// repository shared from the moment it reads the index (the chunks it may reuse) until its snapshot is
// listed; so does a restore or a check. GC holds it exclusively. A waiting GC lets no new holder in ahead of
// it, so it cannot starve; a backup asked for during GC starts when GC is done, against the index GC left.
// The lock lives in the daemon, the only writer of its storage prefix (which must be private to the node).
export class RepoLock {
  #shared = 0;
  #exclusive = false;
  #queue: { exclusive: boolean; grant: () => void }[] = [];

  shared(): Promise<() => void> {
    return this.#acquire(false);
  }

  exclusive(): Promise<() => void> {
    return this.#acquire(true);
  }

  get busy(): boolean {
    return this.#shared > 0 || this.#exclusive || this.#queue.length > 0;
  }

  #acquire(exclusive: boolean): Promise<() => void> {
    return new Promise((resolve) => {
      this.#queue.push({ exclusive, grant: () => resolve(this.#releaser(exclusive)) });
      this.#pump();
    });
  }

  #releaser(exclusive: boolean): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (exclusive) this.#exclusive = false;
      else this.#shared--;
      this.#pump();
    };
  }

  #pump(): void {
    while (this.#queue.length > 0 && !this.#exclusive) {
      const next = this.#queue[0];
      if (next.exclusive && this.#shared > 0) return;
      this.#queue.shift();
      if (next.exclusive) this.#exclusive = true;
      else this.#shared++;
      next.grant();
      if (next.exclusive) return;
    }
  }
}
