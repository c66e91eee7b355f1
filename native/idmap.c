// idmapMount(source, target, uidBase, gidBase, count): attaches at target a read-only, nodev, nosuid bind
// of source whose ids read as shifted: on-disk id N (N < count) shows as uidBase+N / gidBase+N; ids at or
// above count read as the overflow id 65534 (nobody). mount_setattr(2) MOUNT_ATTR_IDMAP is Linux >= 5.12;
// overlayfs takes such a mount as a lower layer since 5.19. A workspace's image then belongs to its
// container root without a single chown.
//
// The kernel takes the mapping from a user namespace, so we make a throwaway one: a tiny child cloned into
// CLONE_NEWUSER that only waits on a pipe, whose uid_map/gid_map the parent writes (a child cannot map
// host ids it does not hold). The mount keeps the idmapping; the child is killed and reaped before return,
// and the namespace is kept for the next mount with the same mapping (userns_for).
// Cheap (CLONE_VM: no copy of Node's page tables), but it waits for the holder child to run: on a worker.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOLDER_STACK_SIZE (64 * 1024)

// Idmapped, read-only (the overlay's upper takes every write), nodev (an image's device node is no door
// to a host device) and nosuid. nosuid here does not strip the image's setuid programs (sudo, su, ping)
// inside the workspace: exec through an overlay obeys the overlay's mount flags, not its layers' (checked
// on 6.18, and by test/sandbox/rootfs.test.ts). It only means that a host user who walks into this mount
// cannot run them as the mapped host id.
#define IDMAP_ATTRS (MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID)

// The holder child. It shares the parent's memory (CLONE_VM) and even its TLS, so it makes raw syscalls
// only and touches nothing but its own stack: close its copy of the write end, block until the parent
// closes its own (or dies), exit. All signals are blocked, so no Node handler ever runs here.
static int hold_userns(void *arg) {
  const int *pipe_fds = arg;
  char byte;
  syscall(SYS_close, pipe_fds[1]);
  syscall(SYS_read, pipe_fds[0], &byte, 1);
  syscall(SYS_exit, 0);
  return 0;
}

static int write_map(pid_t pid, const char *name, uint32_t base, uint32_t count) {
  char path[64], line[64];
  snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
  int len = snprintf(line, sizeof line, "0 %u %u\n", base, count);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = write(fd, line, (size_t)len);
  int err = errno;
  close(fd);
  if (n == len) return 0;
  errno = n < 0 ? err : EIO;
  return -1;
}

// A user namespace fd mapping 0..count-1 to uid_base.. and gid_base..; -1 with *step and errno set.
static int make_userns(uint32_t uid_base, uint32_t gid_base, uint32_t count, const char **step) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    *step = "idmap pipe";
    return -1;
  }
  char *stack = malloc(HOLDER_STACK_SIZE);
  if (!stack) {
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    *step = "idmap malloc";
    errno = ENOMEM;
    return -1;
  }
  sigset_t all, saved;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &saved);
  // Exit signal 0: nothing wakes libuv's SIGCHLD handling; we reap with __WALL below.
  pid_t pid = clone(hold_userns, stack + HOLDER_STACK_SIZE, CLONE_NEWUSER | CLONE_VM, pipe_fds);
  int clone_err = errno;
  pthread_sigmask(SIG_SETMASK, &saved, NULL);
  close(pipe_fds[0]);
  if (pid < 0) {
    close(pipe_fds[1]);
    free(stack);
    *step = "idmap clone";
    errno = clone_err;
    return -1;
  }

  int ns = -1, err = 0;
  if (write_map(pid, "uid_map", uid_base, count) != 0) {
    *step = "idmap uid_map";
    err = errno;
  } else if (write_map(pid, "gid_map", gid_base, count) != 0) {
    *step = "idmap gid_map";
    err = errno;
  } else {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
    ns = open(path, O_RDONLY | O_CLOEXEC);
    if (ns < 0) {
      *step = "idmap open userns";
      err = errno;
    }
  }
  close(pipe_fds[1]);
  // A process another thread forks right now could hold a copy of the write end until its exec.
  kill(pid, SIGKILL);
  while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR) {
  }
  free(stack);  // only after the reap: the child ran on it
  errno = err;
  return ns;
}

// User namespaces by mapping, kept open: ranges come back as workspaces come and go, and making one costs
// a clone, two map writes and a reap (~0.5 ms of every start). A namespace with no process in it holds
// nothing but its mapping, which never changes. Round-robin eviction.
#define USERNS_CACHE_SIZE 64
static struct {
  uint32_t uid_base, gid_base, count;  // count 0: an empty slot
  int fd;
} userns_cache[USERNS_CACHE_SIZE];
static size_t userns_evict_next;
static pthread_mutex_t userns_lock = PTHREAD_MUTEX_INITIALIZER;

// A new fd (the caller closes it) for a namespace with this mapping; -1 with *step and errno set.
static int userns_for(uint32_t uid_base, uint32_t gid_base, uint32_t count, const char **step) {
  pthread_mutex_lock(&userns_lock);
  int fd = -1;
  for (size_t i = 0; i < USERNS_CACHE_SIZE && fd < 0; i++) {
    if (userns_cache[i].count == count && userns_cache[i].uid_base == uid_base && userns_cache[i].gid_base == gid_base)
      fd = fcntl(userns_cache[i].fd, F_DUPFD_CLOEXEC, 0);
  }
  if (fd < 0) {
    int ns = make_userns(uid_base, gid_base, count, step);
    if (ns >= 0) {
      size_t slot = userns_evict_next++ % USERNS_CACHE_SIZE;
      if (userns_cache[slot].count) close(userns_cache[slot].fd);
      userns_cache[slot].uid_base = uid_base;
      userns_cache[slot].gid_base = gid_base;
      userns_cache[slot].count = count;
      userns_cache[slot].fd = ns;
      fd = fcntl(ns, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) *step = "idmap dup userns";
    }
  }
  int err = errno;
  pthread_mutex_unlock(&userns_lock);
  errno = err;
  return fd;
}

// 0, or -1 with *step and errno set. Nothing stays open or attached on failure.
static int idmap_mount(const char *source, const char *target, uint32_t uid_base, uint32_t gid_base,
                       uint32_t count, const char **step) {
  int tree = open_tree(AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  if (tree < 0) {
    *step = "idmap open_tree";
    return -1;
  }
  int ns = userns_for(uid_base, gid_base, count, step);
  if (ns < 0) {
    int err = errno;
    close(tree);
    errno = err;
    return -1;
  }
  struct mount_attr attr = {.attr_set = IDMAP_ATTRS, .userns_fd = (uint64_t)ns};
  int rc = mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
  int err = errno;
  close(ns);  // the mount holds its own reference to the idmapping
  if (rc != 0) {
    *step = "idmap mount_setattr";
  } else if ((rc = move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)) != 0) {
    *step = "idmap move_mount";
    err = errno;
  }
  close(tree);  // a detached tree that was never attached is freed with its last fd
  errno = err;
  return rc;
}

// On a libuv worker: a new mapping clones a holder child that must be scheduled before the call returns,
// which on a busy node is milliseconds (bench/density: 2.5 ms per start on the event loop).
typedef struct {
  char *source, *target;
  uint32_t uid_base, gid_base, count;
} idmap_args;

static void free_idmap_args(void *p) {
  idmap_args *a = p;
  free(a->source);
  free(a->target);
  free(a);
}

static int idmap_work(void *p, const char **step) {
  idmap_args *a = p;
  *step = "idmap";
  return idmap_mount(a->source, a->target, a->uid_base, a->gid_base, a->count, step) != 0 ? errno : 0;
}

static napi_value js_idmap_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) return tx_type_error(env, "idmapMount(source, target, uidBase, gidBase, count)");
  idmap_args *a = calloc(1, sizeof *a);
  if (!a) return tx_throw(env, "idmapMount", ENOMEM);
  if (!tx_get_string(env, argv[0], "idmapMount: source must be a string", &a->source) ||
      !tx_get_string(env, argv[1], "idmapMount: target must be a string", &a->target) ||
      !tx_get_uint32(env, argv[2], "idmapMount: uidBase must be an unsigned 32-bit number", &a->uid_base) ||
      !tx_get_uint32(env, argv[3], "idmapMount: gidBase must be an unsigned 32-bit number", &a->gid_base) ||
      !tx_get_uint32(env, argv[4], "idmapMount: count must be an unsigned 32-bit number", &a->count)) {
    free_idmap_args(a);
    return NULL;
  }
  if (a->count == 0 || a->count > UINT32_MAX - a->uid_base || a->count > UINT32_MAX - a->gid_base) {
    free_idmap_args(a);
    return tx_type_error(env, "idmapMount: count must be positive and the ranges must fit in 32 bits");
  }
  return tx_run_async(env, "idmapMount", idmap_work, a, free_idmap_args);
}

void tx_register_idmap(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "idmapMount", js_idmap_mount);
}
