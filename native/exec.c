// execProcess(opts): a process inside a RUNNING workspace, in the same sandbox as its workload (docs/exec.md).
// The order, as the kernel sees it:
//   daemon worker thread  opens the workspace's cgroup files, reads init's rlimits and root (through the
//                         host's /proc, checked against init's pidfd), makes the stdio pipes or the pty
//                         socket pair, then starts the intermediate C1 as vfork does (CLONE_VM|CLONE_VFORK:
//                         no copy of the daemon's page tables; the worker waits until C1 exits).
//   C1 (host pid ns)      oom_score_adj 0; init's rlimits (still host root: may raise a hard limit); writes
//                         itself into each v1 `tasks` file (v2: cgroup.procs); setns(init's pidfd, user|mnt|pid|
//                         net|ipc|uts|cgroup) in one call (kernel >= 5.8): nothing is looked up by a
//                         /proc/<pid>/ns path the workspace could swap. setns(CLONE_NEWPID) only applies to
//                         children, so C1 clone3s C2 with CLONE_PARENT (C2 is the daemon's child, reaped
//                         through its pidfd), reports C2's host pid and exits.
//   C2 (workspace pid ns) its own session; the namespace's root; the root must be init's; the workload's
//                         bounding set, no ambient or inheritable caps, then the asked-for uid/gid; a pty
//                         from the workspace's own devpts (its master goes to the daemon over SCM_RIGHTS) or
//                         the pipes on 0-2; every other fd closed (close_range); cwd resolved inside the root
//                         (openat2 RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), as the workspace's uid, after
//                         the close; no_new_privs; the workload's seccomp filter; execve.
// C2 is non-dumpable from its first instruction until its execve (CVE-2016-9962: a workspace process
// ptracing or reading /proc/<pid>/fd of a half-entered exec). C1 shares the daemon's memory, so it cannot
// be made non-dumpable without the daemon; it lives only in the host's pid namespace, where no workspace
// process can name it, and runs as host uid 0, which no workspace uid matches. Failures travel as tx_report {step, errno} over a close-on-exec
// pipe; EOF means C2 exec'd. Like spawn.c, the children do only async-signal-safe work: no malloc, no stdio,
// raw setxid syscalls. The pty masters of terminal sessions are parked in the workspace's init (see
// parkSessions below) so they survive a daemon restart.
#define _GNU_SOURCE
#include "tetrix.h"
#include "spawn-protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

#define EXEC_NS_FLAGS (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define PARK_META_MAX 4096

enum exec_step {
  X_DUMPABLE = 1,
  X_OOM_SCORE,
  X_RLIMIT,        // index: resource
  X_JOIN_CGROUP,   // index: opts.cgroupTasks[index]
  X_SETNS,
  X_CLONE,
  X_PID,           // notice: index = C2's host pid
  X_PDEATHSIG,
  X_SETSID,
  X_SETGROUPS,
  X_SETRESGID,
  X_SETRESUID,
  X_ROOT,          // "/" is not init's root
  X_CAPBSET,       // index: capability
  X_CAP_AMBIENT,
  X_USER_GID,
  X_USER_UID,
  X_CAPSET,
  X_PTMX,
  X_PTY_UNLOCK,
  X_PTY_SIZE,
  X_PTY_PEER,
  X_PTY_SEND,
  X_CTTY,
  X_DUP,           // index: target fd
  X_CLOSE_RANGE,
  X_CWD,
  X_NO_NEW_PRIVS,
  X_SIGMASK,
  X_SECCOMP,
  X_EXEC,
  X_COUNT
};

static const char *const step_names[X_COUNT] = {
    [X_DUMPABLE] = "exec: prctl PR_SET_DUMPABLE",
    [X_OOM_SCORE] = "exec: write oom_score_adj",
    [X_RLIMIT] = "exec: setrlimit",
    [X_JOIN_CGROUP] = "exec: join cgroup",
    [X_SETNS] = "exec: setns",
    [X_CLONE] = "exec: clone3",
    [X_PDEATHSIG] = "exec: prctl PR_SET_PDEATHSIG",
    [X_SETSID] = "exec: setsid",
    [X_SETGROUPS] = "exec: setgroups",
    [X_SETRESGID] = "exec: setresgid",
    [X_SETRESUID] = "exec: setresuid",
    [X_ROOT] = "exec: / is not the workload's root",
    [X_CAPBSET] = "exec: drop capability",
    [X_CAP_AMBIENT] = "exec: clear ambient capabilities",
    [X_USER_GID] = "exec: setresgid user",
    [X_USER_UID] = "exec: setresuid user",
    [X_CAPSET] = "exec: capset",
    [X_PTMX] = "exec: open /dev/pts/ptmx",
    [X_PTY_UNLOCK] = "exec: unlock pty",
    [X_PTY_SIZE] = "exec: set pty size",
    [X_PTY_PEER] = "exec: open pty peer",
    [X_PTY_SEND] = "exec: send pty master",
    [X_CTTY] = "exec: set controlling terminal",
    [X_DUP] = "exec: dup fd",
    [X_CLOSE_RANGE] = "exec: close_range",
    [X_CWD] = "exec: chdir",
    [X_NO_NEW_PRIVS] = "exec: no_new_privs",
    [X_SIGMASK] = "exec: sigprocmask",
    [X_SECCOMP] = "exec: seccomp",
    [X_EXEC] = "execve",
};

typedef struct {
  // options
  int init_pidfd, init_pid;
  char **argv, **envp;
  char *cwd;
  uint32_t uid, gid;
  char **cgroup_tasks;
  size_t cgroup_count;
  char *cgroup_dir;
  uint64_t keep_caps;
  struct sock_filter *seccomp;
  unsigned short seccomp_len;
  bool tty, die_with_daemon;
  uint16_t rows, cols;

  // prepared by the parent before the clone
  int last_cap;
  int *cgroup_fds;
  int cgroup_dir_fd;
  int cgroup_procs_fd;  // v2: <dir>/cgroup.procs
  struct rlimit limits[RLIM_NLIMITS];
  dev_t root_dev;
  ino_t root_ino;
  int child_stdio[3];   // non-tty: the child's ends (stdin read, stdout write, stderr write)
  int child_sock;       // tty: the child's end of the master hand-over

  // outcome
  int pid, pidfd;
  int fds[3];           // non-tty: stdin write, stdout read, stderr read; tty: fds[0] = the master
  char *fail_step;
  int fail_errno;
  napi_deferred deferred;
  napi_async_work work;
} exec_job;

static void free_strv(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void free_job(exec_job *job) {
  free_strv(job->argv);
  free_strv(job->envp);
  free(job->cwd);
  free_strv(job->cgroup_tasks);
  free(job->cgroup_dir);
  if (job->cgroup_fds)
    for (size_t i = 0; i < job->cgroup_count; i++) close_fd(&job->cgroup_fds[i]);
  free(job->cgroup_fds);
  close_fd(&job->cgroup_dir_fd);
  close_fd(&job->cgroup_procs_fd);
  for (int i = 0; i < 3; i++) {
    close_fd(&job->child_stdio[i]);
    close_fd(&job->fds[i]);
  }
  close_fd(&job->child_sock);
  close_fd(&job->pidfd);
  free(job->seccomp);
  free(job->fail_step);
  free(job);
}

// ===================================================================================================
// The children. No malloc, no stdio, no locks; raw setxid syscalls (glibc would signal the parent's threads).

typedef struct {
  const exec_job *job;
  int report_fd;
} child_ctx;

static void report(child_ctx *c, int step, int index, int err) {
  tx_report r = {.step = step, .index = index, .err = err};
  ssize_t n;
  do n = write(c->report_fd, &r, sizeof r);
  while (n < 0 && errno == EINTR);
}

__attribute__((noreturn)) static void child_fail(child_ctx *c, int step, int index, int err) {
  report(c, step, index, err);
  _exit(127);
}

#define CHECK(c, call, step, index)                          \
  do {                                                       \
    if ((call) < 0) child_fail((c), (step), (index), errno); \
  } while (0)

static void reset_signal_dispositions(void) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL);
}

static ssize_t write_all(int fd, const char *buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = write(fd, buf + done, len - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    done += (size_t)n;
  }
  return (ssize_t)done;
}

// The workload's bounding set and nothing inheritable or ambient (CVE-2022-27650 class), as spawn.c does.
static void drop_bounding_set(child_ctx *c) {
  uint64_t keep = c->job->keep_caps;
  for (int cap = 0; cap <= c->job->last_cap; cap++)
    if (!(keep & (1ULL << cap))) CHECK(c, prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), X_CAPBSET, cap);
  CHECK(c, prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), X_CAP_AMBIENT, 0);
}

// Root keeps the workload's set in permitted and effective; another uid gets none (the kernel cleared
// them at setresuid, capset(0) makes it explicit).
static void set_capabilities(child_ctx *c, bool root) {
  uint64_t keep = root ? c->job->keep_caps : 0;
  struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  for (int i = 0; i < 2; i++) {
    uint32_t half = (uint32_t)(keep >> (32 * i));
    data[i].effective = half;
    data[i].permitted = half;
  }
  CHECK(c, syscall(SYS_capset, &header, data), X_CAPSET, 0);
}

static int open_beneath_root(const char *path, uint64_t flags, uint64_t resolve) {
  int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return -1;
  struct open_how how = {.flags = flags | O_CLOEXEC, .resolve = resolve};
  int fd;
  do fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
  while (fd < 0 && errno == EAGAIN);
  int err = errno;
  close(root);
  errno = err;
  return fd;
}

static int send_fd(int sock, int fd) {
  char byte = 'm';
  char control[CMSG_SPACE(sizeof(int))];
  memset(control, 0, sizeof control);
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n == 1 ? 0 : -1;
}

// A pty of the workspace's own devpts instance: it counts against the workspace's pty limit (max=), its
// slave lives inside, and nothing is looked up by a path the workspace could replace: /dev/pts/ptmx is
// opened without following symlinks and checked to be devpts, the slave comes from TIOCGPTPEER.
// Returns the slave; the master has gone to the daemon.
static int open_pty(child_ctx *c, int sock) {
  int master = open_beneath_root("/dev/pts/ptmx", O_RDWR | O_NOCTTY,
                                 RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
  CHECK(c, master, X_PTMX, 0);
  struct statfs fs;
  CHECK(c, fstatfs(master, &fs), X_PTMX, 0);
  if (fs.f_type != DEVPTS_SUPER_MAGIC) child_fail(c, X_PTMX, 0, ENOTTY);
  int unlock = 0;
  CHECK(c, ioctl(master, TIOCSPTLCK, &unlock), X_PTY_UNLOCK, 0);
  struct winsize ws = {.ws_row = c->job->rows, .ws_col = c->job->cols};
  CHECK(c, ioctl(master, TIOCSWINSZ, &ws), X_PTY_SIZE, 0);
  int slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  CHECK(c, slave, X_PTY_PEER, 0);
  CHECK(c, send_fd(sock, master), X_PTY_SEND, 0);
  close(master);
  close(sock);
  CHECK(c, ioctl(slave, TIOCSCTTY, 0), X_CTTY, 0);
  return slave;
}

// 0-2 = the session's stdio, 3 = the report pipe (close-on-exec: EOF at execve), nothing else
// (CVE-2024-21626: every host fd closed, not merely marked close-on-exec).
static void set_up_fds(child_ctx *c, const int stdio[3]) {
  int lifted[4];
  for (int i = 0; i < 3; i++) {
    lifted[i] = fcntl(stdio[i], F_DUPFD_CLOEXEC, 4);
    CHECK(c, lifted[i], X_DUP, i);
  }
  lifted[3] = fcntl(c->report_fd, F_DUPFD_CLOEXEC, 4);
  CHECK(c, lifted[3], X_DUP, 3);
  c->report_fd = lifted[3];
  for (int i = 0; i < 3; i++) CHECK(c, dup2(lifted[i], i), X_DUP, i);
  CHECK(c, dup3(lifted[3], 3, O_CLOEXEC), X_DUP, 3);
  c->report_fd = 3;
  CHECK(c, close_range(4, ~0U, 0), X_CLOSE_RANGE, 0);
}

static const char *env_value(char *const *envp, const char *name) {
  size_t n = strlen(name);
  for (char *const *p = envp; *p; p++)
    if (strncmp(*p, name, n) == 0 && (*p)[n] == '=') return *p + n + 1;
  return NULL;
}

// execvpe(3) without the daemon's PATH: the search uses the session's own env, and a stack buffer.
static int exec_search(char *const *argv, char *const *envp) {
  const char *file = argv[0];
  if (strchr(file, '/')) return execve(file, argv, envp);
  const char *path = env_value(envp, "PATH");
  if (!path) path = DEFAULT_PATH;
  size_t flen = strlen(file);
  char buf[PATH_MAX];
  bool denied = false;
  int err = ENOENT;
  for (const char *p = path;; p++) {
    const char *end = strchrnul(p, ':');
    size_t dlen = (size_t)(end - p);
    if (dlen + flen + 2 <= sizeof buf) {
      memcpy(buf, p, dlen);
      size_t at = dlen;
      if (dlen == 0) buf[at++] = '.';
      buf[at++] = '/';
      memcpy(buf + at, file, flen + 1);
      execve(buf, argv, envp);
      err = errno;
      if (err == EACCES) denied = true;
      else if (err != ENOENT && err != ENOTDIR) return -1;
    }
    if (*end == '\0') break;
    p = end;
  }
  errno = denied ? EACCES : err;
  return -1;
}

__attribute__((noreturn)) static void run_session(child_ctx *c, const int stdio[3], int sock) {
  const exec_job *job = c->job;
  // First: this copy of the mm is ours alone, and we are already visible in the workspace's pid namespace.
  CHECK(c, prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), X_DUMPABLE, 0);
  CHECK(c, setsid(), X_SETSID, 0);
  CHECK(c, syscall(SYS_setgroups, 0, NULL), X_SETGROUPS, 0);
  CHECK(c, syscall(SYS_setresgid, 0, 0, 0), X_SETRESGID, 0);
  CHECK(c, syscall(SYS_setresuid, 0, 0, 0), X_SETRESUID, 0);
  // setns put us at the mount namespace's root; it must be the one init (and so the workload) runs in.
  struct stat st;
  CHECK(c, stat("/", &st), X_ROOT, 0);
  if (st.st_dev != job->root_dev || st.st_ino != job->root_ino) child_fail(c, X_ROOT, 0, EXDEV);
  drop_bounding_set(c);
  bool root = job->uid == 0 && job->gid == 0;
  if (!root) {
    CHECK(c, syscall(SYS_setresgid, job->gid, job->gid, job->gid), X_USER_GID, 0);
    CHECK(c, syscall(SYS_setresuid, job->uid, job->uid, job->uid), X_USER_UID, 0);
  }
  set_capabilities(c, root);
  // After the setxid calls, which clear it (prctl(2)). Our parent is the daemon, outside this pid namespace:
  // getppid() is 0 until it dies and init adopts us.
  if (job->die_with_daemon) {
    CHECK(c, prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), X_PDEATHSIG, 0);
    if (getppid() != 0) child_fail(c, X_PDEATHSIG, 0, ESRCH);
  }
  int fds[3] = {stdio[0], stdio[1], stdio[2]};
  if (job->tty) fds[0] = fds[1] = fds[2] = open_pty(c, sock);
  set_up_fds(c, fds);
  // After the close and as the session's uid: nothing of the host is left to resolve against, and a
  // symlink in the path cannot leave the root.
  int cwd = open_beneath_root(job->cwd, O_PATH | O_DIRECTORY, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS);
  CHECK(c, cwd, X_CWD, 0);
  CHECK(c, fchdir(cwd), X_CWD, 0);
  close(cwd);
  CHECK(c, prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), X_NO_NEW_PRIVS, 0);
  sigset_t none;
  sigemptyset(&none);
  CHECK(c, sigprocmask(SIG_SETMASK, &none, NULL), X_SIGMASK, 0);
  if (job->seccomp_len) {
    struct sock_fprog prog = {.len = job->seccomp_len, .filter = job->seccomp};
    CHECK(c, syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog), X_SECCOMP, 0);
  }
  exec_search(job->argv, job->envp);
  child_fail(c, X_EXEC, 0, errno);
}

static char oom_zero[] = "0";

// C1 runs in the daemon's memory (CLONE_VM) on a stack of its own, with its own fd table, signal handlers,
// rlimits and credentials: it writes nothing but its own stack and makes only syscalls.
__attribute__((noreturn)) static void run_intermediate(child_ctx *c, const int stdio[3], int sock) {
  const exec_job *job = c->job;
  reset_signal_dispositions();  // its own handler table (no CLONE_SIGHAND); signals stay blocked until execve
  umask(022);
  // The daemon's OOM protection is not the session's (spawn.c configure_child does the same for init).
  int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  CHECK(c, oom, X_OOM_SCORE, 0);
  CHECK(c, write_all(oom, oom_zero, 1), X_OOM_SCORE, 0);
  close(oom);
  // Still host root here, so a hard limit above the daemon's can be set.
  for (int r = 0; r < RLIM_NLIMITS; r++) CHECK(c, setrlimit(r, &job->limits[r]), X_RLIMIT, r);
  for (size_t i = 0; i < job->cgroup_count; i++) CHECK(c, write(job->cgroup_fds[i], "0", 1), X_JOIN_CGROUP, (int)i);
  if (job->cgroup_procs_fd >= 0) CHECK(c, write(job->cgroup_procs_fd, "0", 1), X_JOIN_CGROUP, -1);
  CHECK(c, setns(job->init_pidfd, EXEC_NS_FLAGS), X_SETNS, 0);
  struct clone_args args = {.flags = CLONE_PARENT, .exit_signal = 0};
  long pid = syscall(SYS_clone3, &args, sizeof args);
  CHECK(c, pid, X_CLONE, 0);
  if (pid == 0) run_session(c, stdio, sock);
  report(c, X_PID, (int)pid, 0);
  _exit(0);
}

// ===================================================================================================
// The parent, on a libuv worker thread.

static void fail(exec_job *job, const char *step, int err) {
  if (job->fail_step) return;
  job->fail_step = strdup(step);
  job->fail_errno = err;
}

static void fail_report(exec_job *job, const tx_report *r) {
  char buf[PATH_MAX + 64];
  const char *name = r->step > 0 && r->step < X_COUNT && step_names[r->step] ? step_names[r->step] : "exec: unknown step";
  if (r->step == X_JOIN_CGROUP && r->index >= 0 && (size_t)r->index < job->cgroup_count)
    snprintf(buf, sizeof buf, "%s %s", name, job->cgroup_tasks[r->index]);
  else if (r->step == X_CWD)
    snprintf(buf, sizeof buf, "%s %s", name, job->cwd);
  else if (r->step == X_EXEC)
    snprintf(buf, sizeof buf, "%s %s", name, job->argv[0]);
  else if (r->step == X_CAPBSET || r->step == X_RLIMIT || r->step == X_DUP)
    snprintf(buf, sizeof buf, "%s %d", name, r->index);
  else
    snprintf(buf, sizeof buf, "%s", name);
  fail(job, buf, r->err);
}

static bool init_alive(const exec_job *job) {
  return syscall(SYS_pidfd_send_signal, job->init_pidfd, 0, NULL, 0) == 0;
}

// init's rlimits and root, read through the host's /proc by pid: the pidfd answering before and after says
// the pid was still init (a recycled pid would need init to be gone).
static int read_init_facts(exec_job *job) {
  char path[64];
  struct stat st;
  if (!init_alive(job)) return fail(job, "exec: workspace init", errno), -1;
  for (int r = 0; r < RLIM_NLIMITS; r++)
    if (prlimit(job->init_pid, r, NULL, &job->limits[r]) < 0) return fail(job, "exec: prlimit of init", errno), -1;
  snprintf(path, sizeof path, "/proc/%d/root", job->init_pid);
  if (stat(path, &st) < 0) return fail(job, "exec: stat init's root", errno), -1;
  job->root_dev = st.st_dev;
  job->root_ino = st.st_ino;
  if (!init_alive(job)) return fail(job, "exec: workspace init", errno), -1;
  return 0;
}

static int open_cgroups(exec_job *job) {
  char step[PATH_MAX + 16];
  job->cgroup_fds = calloc(job->cgroup_count ? job->cgroup_count : 1, sizeof(int));
  if (!job->cgroup_fds) return fail(job, "exec: calloc", ENOMEM), -1;
  for (size_t i = 0; i < job->cgroup_count; i++) job->cgroup_fds[i] = -1;
  for (size_t i = 0; i < job->cgroup_count; i++) {
    job->cgroup_fds[i] = open(job->cgroup_tasks[i], O_WRONLY | O_CLOEXEC);
    if (job->cgroup_fds[i] < 0) {
      snprintf(step, sizeof step, "exec: open %s", job->cgroup_tasks[i]);
      return fail(job, step, errno), -1;
    }
  }
  if (job->cgroup_dir[0]) {
    job->cgroup_dir_fd = open(job->cgroup_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (job->cgroup_dir_fd >= 0) job->cgroup_procs_fd = openat(job->cgroup_dir_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (job->cgroup_dir_fd < 0 || job->cgroup_procs_fd < 0) {
      snprintf(step, sizeof step, "exec: open %s/cgroup.procs", job->cgroup_dir);
      return fail(job, step, errno), -1;
    }
  }
  return 0;
}

// The pipes (non-tty) or the master's socket pair (tty). Every end is close-on-exec.
static int make_stdio(exec_job *job) {
  if (job->tty) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return fail(job, "exec: socketpair", errno), -1;
    job->fds[0] = sv[0];
    job->child_sock = sv[1];
    return 0;
  }
  for (int i = 0; i < 3; i++) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return fail(job, "exec: pipe", errno), -1;
    // stdin: the child reads p[0]; stdout/stderr: the child writes p[1].
    job->child_stdio[i] = i == 0 ? p[0] : p[1];
    job->fds[i] = i == 0 ? p[1] : p[0];
  }
  return 0;
}

static void collect_reports(exec_job *job, int fd) {
  tx_report r;
  for (;;) {
    ssize_t n = read(fd, &r, sizeof r);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return;
    if (n != (ssize_t)sizeof r) return fail(job, "exec: read child report", n < 0 ? errno : EPROTO);
    if (r.err == 0 && r.step == X_PID) job->pid = r.index;
    else if (r.err != 0) fail_report(job, &r);
  }
}

static int receive_master(exec_job *job) {
  char byte, control[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n;
  do n = recvmsg(job->fds[0], &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n != 1) return fail(job, "exec: receive pty master", n < 0 ? errno : EPROTO), -1;
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  if (!cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int)))
    return fail(job, "exec: receive pty master", EPROTO), -1;
  int master;
  memcpy(&master, CMSG_DATA(cm), sizeof master);
  close(job->fds[0]);
  job->fds[0] = master;
  return 0;
}

static void kill_and_reap(int pidfd) {
  siginfo_t si;
  syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
  while (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0 && errno == EINTR) {
  }
}

#define C1_STACK (256 * 1024)

typedef struct {
  const exec_job *job;
  int report_fd, parent_report_fd;
} intermediate_args;

static int intermediate_main(void *arg) {
  const intermediate_args *a = arg;
  // Its own fd table (no CLONE_FILES): these closes leave the daemon's fds alone.
  close(a->parent_report_fd);
  for (int i = 0; i < 3; i++)
    if (a->job->fds[i] >= 0) close(a->job->fds[i]);
  child_ctx c = {.job = a->job, .report_fd = a->report_fd};
  run_intermediate(&c, a->job->child_stdio, a->job->child_sock);
}

static void exec_execute(napi_env env, void *data) {
  (void)env;
  exec_job *job = data;
  int report_pipe[2] = {-1, -1}, c1_pidfd = -1;
  job->last_cap = 63;
  int last = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
  if (last >= 0) {
    char buf[16] = {0};
    if (read(last, buf, sizeof buf - 1) > 0 && atoi(buf) < 63) job->last_cap = atoi(buf);
    close(last);
  }
  if (read_init_facts(job) < 0 || open_cgroups(job) < 0 || make_stdio(job) < 0) return;
  if (pipe2(report_pipe, O_CLOEXEC) < 0) return fail(job, "exec: pipe", errno);

  void *stack = mmap(NULL, C1_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    close(report_pipe[0]);
    close(report_pipe[1]);
    return fail(job, "exec: mmap stack", errno);
  }
  intermediate_args a = {.job = job, .report_fd = report_pipe[1], .parent_report_fd = report_pipe[0]};
  sigset_t all, saved;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &saved);
  // As posix_spawn: the worker thread sleeps until C1 exits (C1 never execs).
  int pid = clone(intermediate_main, (char *)stack + C1_STACK, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &a, &c1_pidfd);
  int clone_err = errno;
  pthread_sigmask(SIG_SETMASK, &saved, NULL);
  munmap(stack, C1_STACK);
  close(report_pipe[1]);
  for (int i = 0; i < 3; i++) close_fd(&job->child_stdio[i]);
  close_fd(&job->child_sock);
  if (pid < 0) {
    close(report_pipe[0]);
    return fail(job, "exec: clone3", clone_err);
  }
  collect_reports(job, report_pipe[0]);
  close(report_pipe[0]);
  siginfo_t si;
  while (waitid(P_PIDFD, (id_t)c1_pidfd, &si, WEXITED) < 0 && errno == EINTR) {
  }
  close(c1_pidfd);
  // C2 is our child (CLONE_PARENT) and not yet reaped, so its pid cannot have been reused.
  if (job->pid > 0) {
    job->pidfd = (int)syscall(SYS_pidfd_open, job->pid, 0);
    if (job->pidfd < 0) fail(job, "exec: pidfd_open", errno);
  } else if (!job->fail_step) {
    fail(job, "exec: intermediate", EPIPE);
  }
  if (!job->fail_step && job->tty) receive_master(job);
  if (job->fail_step && job->pidfd >= 0) {
    kill_and_reap(job->pidfd);
    close_fd(&job->pidfd);
  }
}

static void exec_complete(napi_env env, napi_status status, void *data) {
  exec_job *job = data;
  if (status != napi_ok && !job->fail_step) {
    fail(job, "exec: async work", ECANCELED);
    if (job->pidfd >= 0) kill_and_reap(job->pidfd);
  }
  if (job->fail_step) {
    napi_reject_deferred(env, job->deferred, tx_native_error(env, job->fail_step, job->fail_errno));
  } else {
    static const char *const names[3] = {"stdinFd", "stdoutFd", "stderrFd"};
    napi_value result, v;
    napi_create_object(env, &result);
    napi_create_int32(env, job->pid, &v);
    napi_set_named_property(env, result, "pid", v);
    napi_create_int32(env, job->pidfd, &v);
    napi_set_named_property(env, result, "pidfd", v);
    job->pidfd = -1;
    if (job->tty) {
      napi_create_int32(env, job->fds[0], &v);
      napi_set_named_property(env, result, "masterFd", v);
      job->fds[0] = -1;
    } else {
      for (int i = 0; i < 3; i++) {
        napi_create_int32(env, job->fds[i], &v);
        napi_set_named_property(env, result, names[i], v);
        job->fds[i] = -1;
      }
    }
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_async_work(env, job->work);
  free_job(job);
}

// ===================================================================================================
// Reading ExecOptions on the JS thread.

static bool prop(napi_env env, napi_value obj, const char *name, napi_value *out) {
  return tx_get_prop(env, obj, name, out);
}

static bool present(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && t != napi_undefined && t != napi_null;
}

static bool get_strv(napi_env env, napi_value obj, const char *name, char ***out, uint32_t *count) {
  napi_value arr, item;
  bool is_array = false;
  uint32_t len;
  char what[96];
  snprintf(what, sizeof what, "execProcess: opts.%s must be an array of strings", name);
  if (!prop(env, obj, name, &arr) || napi_is_array(env, arr, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, arr, &len) != napi_ok)
    return tx_type_error(env, what), false;
  char **v = calloc(len + 1, sizeof *v);
  if (!v) return tx_throw(env, "malloc", ENOMEM), false;
  *out = v;
  for (uint32_t i = 0; i < len; i++)
    if (napi_get_element(env, arr, i, &item) != napi_ok || !tx_get_string(env, item, what, &v[i])) return false;
  if (count) *count = len;
  return true;
}

static bool get_string(napi_env env, napi_value obj, const char *name, char **out) {
  napi_value v;
  char what[96];
  snprintf(what, sizeof what, "execProcess: opts.%s must be a string", name);
  return prop(env, obj, name, &v) && tx_get_string(env, v, what, out);
}

static bool get_uint(napi_env env, napi_value obj, const char *name, uint32_t *out) {
  napi_value v;
  char what[96];
  snprintf(what, sizeof what, "execProcess: opts.%s must be an unsigned integer", name);
  return prop(env, obj, name, &v) && tx_get_uint32(env, v, what, out);
}

static bool get_bool(napi_env env, napi_value obj, const char *name, bool *out) {
  napi_value v;
  *out = false;
  if (!prop(env, obj, name, &v) || !present(env, v)) return true;
  if (napi_get_value_bool(env, v, out) != napi_ok) {
    char what[96];
    snprintf(what, sizeof what, "execProcess: opts.%s must be a boolean", name);
    return tx_type_error(env, what), false;
  }
  return true;
}

static bool get_caps(napi_env env, napi_value obj, exec_job *job) {
  napi_value arr, item;
  bool is_array = false;
  uint32_t len, cap;
  if (!prop(env, obj, "capabilities", &arr) || napi_is_array(env, arr, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, arr, &len) != napi_ok)
    return tx_type_error(env, "execProcess: opts.capabilities must be an array"), false;
  for (uint32_t i = 0; i < len; i++) {
    if (napi_get_element(env, arr, i, &item) != napi_ok ||
        !tx_get_uint32(env, item, "execProcess: opts.capabilities must hold capability numbers", &cap))
      return false;
    if (cap > 63) return tx_type_error(env, "execProcess: capability number out of range"), false;
    job->keep_caps |= 1ULL << cap;
  }
  return true;
}

static bool get_seccomp(napi_env env, napi_value obj, exec_job *job) {
  napi_value buf;
  bool is_buffer = false;
  void *data;
  size_t len;
  if (!prop(env, obj, "seccomp", &buf) || !present(env, buf)) return true;
  if (napi_is_buffer(env, buf, &is_buffer) != napi_ok || !is_buffer || napi_get_buffer_info(env, buf, &data, &len) != napi_ok)
    return tx_type_error(env, "execProcess: opts.seccomp must be a Buffer"), false;
  if (len == 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > BPF_MAXINSNS)
    return tx_type_error(env, "execProcess: opts.seccomp must hold 1..4096 struct sock_filter"), false;
  if (!(job->seccomp = malloc(len))) return tx_throw(env, "malloc", ENOMEM), false;
  memcpy(job->seccomp, data, len);
  job->seccomp_len = (unsigned short)(len / sizeof(struct sock_filter));
  return true;
}

static bool read_options(napi_env env, napi_value opts, exec_job *job) {
  uint32_t argc = 0, cgroups = 0, rows = 0, cols = 0, pidfd = 0, pid = 0;
  if (!get_uint(env, opts, "initPidfd", &pidfd) || !get_uint(env, opts, "initPid", &pid) ||
      !get_strv(env, opts, "argv", &job->argv, &argc) || !get_strv(env, opts, "env", &job->envp, NULL) ||
      !get_string(env, opts, "cwd", &job->cwd) || !get_uint(env, opts, "uid", &job->uid) ||
      !get_uint(env, opts, "gid", &job->gid) || !get_strv(env, opts, "cgroupTasks", &job->cgroup_tasks, &cgroups) ||
      !get_string(env, opts, "cgroupDir", &job->cgroup_dir) || !get_caps(env, opts, job) ||
      !get_seccomp(env, opts, job) || !get_bool(env, opts, "tty", &job->tty) ||
      !get_bool(env, opts, "dieWithDaemon", &job->die_with_daemon))
    return false;
  if (job->tty && (!get_uint(env, opts, "rows", &rows) || !get_uint(env, opts, "cols", &cols))) return false;
  job->init_pidfd = (int)pidfd;
  job->init_pid = (int)pid;
  job->cgroup_count = cgroups;
  if (pid == 0 || pid > INT_MAX || pidfd > INT_MAX) return tx_type_error(env, "execProcess: opts.initPid/initPidfd out of range"), false;
  if (argc == 0) return tx_type_error(env, "execProcess: opts.argv must not be empty"), false;
  if (job->cwd[0] != '/') return tx_type_error(env, "execProcess: opts.cwd must be absolute"), false;
  if (rows > 65535 || cols > 65535) return tx_type_error(env, "execProcess: opts.rows and opts.cols must be 0..65535"), false;
  job->rows = (uint16_t)rows;
  job->cols = (uint16_t)cols;
  return true;
}

static exec_job *new_job(void) {
  exec_job *job = calloc(1, sizeof *job);
  if (!job) return NULL;
  job->pid = 0;
  job->pidfd = job->cgroup_dir_fd = job->cgroup_procs_fd = job->child_sock = -1;
  for (int i = 0; i < 3; i++) job->fds[i] = job->child_stdio[i] = -1;
  return job;
}

static napi_value js_exec_process(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], promise, name;
  napi_valuetype t;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_object)
    return tx_type_error(env, "execProcess(opts): opts must be an object");
  exec_job *job = new_job();
  if (!job) return tx_throw(env, "malloc", ENOMEM);
  if (!read_options(env, argv[0], job)) {
    free_job(job);
    return NULL;
  }
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_string_utf8(env, "tetrix.execProcess", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, exec_execute, exec_complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

// ===================================================================================================
// Parking pty masters in init. init holds both ends of a SOCK_SEQPACKET pair at TX_SESSION_PARK_FD and
// TX_SESSION_PARK_PEER_FD and never touches them; a master sent on the first end waits, with a record of
// its session, in the second end's receive queue, referenced by init's open file, for as long as init
// lives. The daemon reaches both ends with pidfd_getfd (init is not dumpable: the workspace cannot), so
// after a restart, even kill -9, it takes the masters back and the sessions carry on.

static int take_park_end(int pidfd, int target, const char *what, char *step, size_t cap) {
  int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);
  if (fd < 0) {
    snprintf(step, cap, "sessions: pidfd_getfd %s (fd %d)", what, target);
    return -1;
  }
  struct stat st;
  int err = fstat(fd, &st) < 0 ? errno : S_ISSOCK(st.st_mode) ? 0 : ENOTSOCK;
  if (err) {
    close(fd);
    snprintf(step, cap, "sessions: init's fd %d is not the session socket", target);
    errno = err;
    return -1;
  }
  return fd;
}

// Receives one parked record and its fd; 0 when the queue is empty.
static int receive_parked(int sock, char *meta, size_t cap, size_t *len, int *fd) {
  char control[CMSG_SPACE(sizeof(int))];
  struct iovec iov = {.iov_base = meta, .iov_len = cap};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n;
  *fd = -1;
  do n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return errno == EAGAIN ? 0 : -1;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int got;
      memcpy(&got, CMSG_DATA(cm) + i * sizeof(int), sizeof got);
      if (*fd < 0) *fd = got;
      else close(got);
    }
  }
  // Only ever a pty master (devpts' ptmx, 5:2) is taken back: whatever else sat there is dropped.
  struct stat st;
  if (*fd >= 0 && (fstat(*fd, &st) < 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(5, 2))) {
    close(*fd);
    *fd = -1;
  }
  *len = (size_t)n;
  return 1;
}

static napi_value parked_array(napi_env env, int sock, bool keep, const char **step, int *err) {
  napi_value arr = NULL, item, v;
  if (keep) napi_create_array(env, &arr);
  uint32_t count = 0;
  char meta[PARK_META_MAX];
  size_t len;
  int fd, r;
  while ((r = receive_parked(sock, meta, sizeof meta, &len, &fd)) == 1) {
    if (!keep || fd < 0) {
      if (fd >= 0) close(fd);
      continue;
    }
    napi_create_object(env, &item);
    napi_create_string_utf8(env, meta, len, &v);
    napi_set_named_property(env, item, "meta", v);
    napi_create_int32(env, fd, &v);
    napi_set_named_property(env, item, "fd", v);
    napi_set_element(env, arr, count++, item);
  }
  if (r < 0) {
    *step = "sessions: recvmsg";
    *err = errno;
  }
  return arr;
}

// takeParkedSessions(initPidfd) -> [{meta, fd}]: every parked master, each a close-on-exec fd of ours. The
// queue is empty afterwards: the caller parks what it keeps again (parkSessions).
static napi_value js_take_parked(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t pidfd;
  char step[96];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !tx_get_int32(env, argv[0], "takeParkedSessions: pidfd must be an integer", &pidfd)) return NULL;
  int peer = take_park_end(pidfd, TX_SESSION_PARK_PEER_FD, "the parked end", step, sizeof step);
  if (peer < 0) return tx_throw(env, step, errno);
  const char *fail_step = NULL;
  int err = 0;
  napi_value arr = parked_array(env, peer, true, &fail_step, &err);
  close(peer);
  if (fail_step) return tx_throw(env, fail_step, err);
  return arr;
}

static int park_one(int sock, const char *meta, size_t len, int fd) {
  char control[CMSG_SPACE(sizeof(int))];
  memset(control, 0, sizeof control);
  struct iovec iov = {.iov_base = (void *)meta, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n == (ssize_t)len ? 0 : -1;
}

// parkSessions(initPidfd, [{meta, fd}]): replaces what init holds with these masters (each sent as a
// reference: the caller keeps its fd). Whatever was parked before is dropped first.
static napi_value js_park_sessions(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], item, v;
  int32_t pidfd, fd;
  uint32_t len;
  bool is_array = false;
  char step[96];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !tx_get_int32(env, argv[0], "parkSessions: pidfd must be an integer", &pidfd)) return NULL;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[1], &len) != napi_ok)
    return tx_type_error(env, "parkSessions: sessions must be an array");
  int end = take_park_end(pidfd, TX_SESSION_PARK_FD, "the sending end", step, sizeof step);
  if (end < 0) return tx_throw(env, step, errno);
  int peer = take_park_end(pidfd, TX_SESSION_PARK_PEER_FD, "the parked end", step, sizeof step);
  if (peer < 0) {
    int err = errno;
    close(end);
    return tx_throw(env, step, err);
  }
  const char *fail_step = NULL;
  int err = 0;
  parked_array(env, peer, false, &fail_step, &err);
  close(peer);
  for (uint32_t i = 0; !fail_step && i < len; i++) {
    char *meta = NULL;
    if (napi_get_element(env, argv[1], i, &item) != napi_ok || !prop(env, item, "fd", &v) ||
        !tx_get_int32(env, v, "parkSessions: sessions[].fd must be an fd", &fd) || !prop(env, item, "meta", &v) ||
        !tx_get_string(env, v, "parkSessions: sessions[].meta must be a string", &meta)) {
      close(end);
      return NULL;
    }
    size_t mlen = strlen(meta);
    if (mlen == 0 || mlen > PARK_META_MAX) {
      free(meta);
      close(end);
      return tx_type_error(env, "parkSessions: sessions[].meta must be 1..4096 bytes");
    }
    if (park_one(end, meta, mlen, fd) < 0) {
      fail_step = "sessions: park master";
      err = errno;
    }
    free(meta);
  }
  close(end);
  if (fail_step) return tx_throw(env, fail_step, err);
  return tx_undefined(env);
}

// sessionParkPair() -> [a, b]: the pair spawn hands init (opts.sessionParkFds), close-on-exec.
static napi_value js_session_park_pair(napi_env env, napi_callback_info info) {
  (void)info;
  int sv[2];
  napi_value arr, v;
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return tx_throw(env, "sessions: socketpair", errno);
  napi_create_array(env, &arr);
  for (uint32_t i = 0; i < 2; i++) {
    napi_create_int32(env, sv[i], &v);
    napi_set_element(env, arr, i, v);
  }
  return arr;
}

// ptyResize(masterFd, rows, cols): TIOCSWINSZ; the kernel sends SIGWINCH to the foreground group.
static napi_value js_pty_resize(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t fd;
  uint32_t rows, cols;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !tx_get_int32(env, argv[0], "ptyResize: fd must be an integer", &fd) ||
      !tx_get_uint32(env, argv[1], "ptyResize: rows must be an unsigned integer", &rows) ||
      !tx_get_uint32(env, argv[2], "ptyResize: cols must be an unsigned integer", &cols))
    return NULL;
  if (rows > 65535 || cols > 65535) return tx_type_error(env, "ptyResize: rows and cols must be 0..65535");
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  if (ioctl(fd, TIOCSWINSZ, &ws) < 0) return tx_throw(env, "pty resize: TIOCSWINSZ", errno);
  return tx_undefined(env);
}

// signalSession(pidfd, pid, signal): the signal to the session's whole process group (its leader set it up
// with setsid, so the group id is the leader's pid). The pidfd answering first says the leader is still
// ours (a zombie counts), so the group id has not been reused.
static napi_value js_signal_session(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t pidfd, pid, sig;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !tx_get_int32(env, argv[0], "signalSession: pidfd must be an integer", &pidfd) ||
      !tx_get_int32(env, argv[1], "signalSession: pid must be an integer", &pid) ||
      !tx_get_int32(env, argv[2], "signalSession: signal must be an integer", &sig))
    return NULL;
  if (pid <= 1) return tx_type_error(env, "signalSession: pid must be above 1");
  if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) != 0) return tx_throw(env, "signal session: pidfd", errno);
  if (kill(-pid, sig) != 0 && errno != ESRCH) return tx_throw(env, "signal session: kill", errno);
  // The leader may have left its group; it gets the signal anyway.
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) != 0 && errno != ESRCH) return tx_throw(env, "signal session: pidfd_send_signal", errno);
  return tx_undefined(env);
}

// ===================================================================================================
// Reading a pty master. libuv's stream reader cannot be used for one: on POLLHUP after a short read it
// reports EOF (right for pipes and sockets), but a master whose slave just closed still holds output, so the
// end of a session's output was lost (test/exec/sessions.test.ts). This reader polls a dup of the master and
// reads until EAGAIN; only EIO (no slave left, nothing buffered: n_tty_read) or 0 ends it.

#include <uv.h>

#define PTY_CHUNK (64 * 1024)
#define PTY_READS_PER_WAKE 16

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context async;
  int fd;
  bool paused, ended, closing;
} pty_reader;

static void free_reader(uv_handle_t *handle) {
  pty_reader *r = handle->data;
  if (r->fd >= 0) close(r->fd);
  napi_delete_reference(r->env, r->callback);
  napi_async_destroy(r->env, r->async);
  free(r);
}

// cb(Buffer) for data, cb(null) once at the end.
static void reader_emit(pty_reader *r, const char *data, ssize_t len) {
  napi_env env = r->env;
  napi_handle_scope scope;
  napi_value cb, recv, arg, ignored;
  napi_open_handle_scope(env, &scope);
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &recv);
  if (data) {
    void *copy;
    napi_create_buffer_copy(env, (size_t)len, data, &copy, &arg);
  } else {
    napi_get_null(env, &arg);
  }
  napi_make_callback(env, r->async, recv, cb, 1, &arg, &ignored);
  napi_close_handle_scope(env, scope);
}

static void reader_end(pty_reader *r) {
  if (r->ended) return;
  r->ended = true;
  uv_poll_stop(&r->poll);
  reader_emit(r, NULL, 0);
}

static void on_pty_readable(uv_poll_t *handle, int status, int events) {
  (void)events;
  pty_reader *r = handle->data;
  static char buf[PTY_CHUNK];  // the loop's thread only
  if (status < 0) return reader_end(r);
  for (int i = 0; i < PTY_READS_PER_WAKE && !r->paused && !r->ended && !r->closing; i++) {
    ssize_t n = read(r->fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) return reader_end(r);  // EIO: no slave left and nothing buffered
    reader_emit(r, buf, n);            // the callback may pause or close us
  }
}

static pty_reader *reader_of(napi_env env, napi_value v) {
  return tx_get_external(env, v, "ptyReader: not a reader");
}

// ptyReadStart(masterFd, cb) -> reader. Reads a dup of masterFd (made non-blocking; the caller keeps its fd).
static napi_value js_pty_read_start(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], name, result;
  int32_t fd;
  napi_valuetype t;
  struct uv_loop_s *loop;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !tx_get_int32(env, argv[0], "ptyReadStart: fd must be an integer", &fd)) return NULL;
  if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function) return tx_type_error(env, "ptyReadStart: callback must be a function");
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return tx_throw(env, "ptyReadStart: event loop", EINVAL);
  pty_reader *r = calloc(1, sizeof *r);
  if (!r) return tx_throw(env, "ptyReadStart", ENOMEM);
  r->env = env;
  r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r->fd < 0 || fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) | O_NONBLOCK) < 0) {
    int err = errno;
    if (r->fd >= 0) close(r->fd);
    free(r);
    return tx_throw(env, "ptyReadStart: dup", err);
  }
  r->poll.data = r;
  int rc = uv_poll_init(loop, &r->poll, r->fd);
  if (rc != 0) {
    close(r->fd);
    free(r);
    return tx_throw(env, "ptyReadStart: uv_poll_init", -rc);
  }
  napi_create_reference(env, argv[1], 1, &r->callback);
  napi_create_string_utf8(env, "tetrix.ptyReader", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &r->async);
  uv_poll_start(&r->poll, UV_READABLE, on_pty_readable);
  napi_create_external(env, r, NULL, NULL, &result);
  return result;
}

static napi_value reader_call(napi_env env, napi_callback_info info, int what) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  pty_reader *r = argc < 1 ? NULL : reader_of(env, argv[0]);
  if (!r) return NULL;
  if (r->closing) return tx_undefined(env);
  if (what == 0 && !r->paused) {
    r->paused = true;
    if (!r->ended) uv_poll_stop(&r->poll);
  } else if (what == 1 && r->paused) {
    r->paused = false;
    if (!r->ended) uv_poll_start(&r->poll, UV_READABLE, on_pty_readable);
  } else if (what == 2) {
    r->closing = true;
    uv_close((uv_handle_t *)&r->poll, free_reader);
  }
  return tx_undefined(env);
}

static napi_value js_pty_read_pause(napi_env env, napi_callback_info info) { return reader_call(env, info, 0); }
static napi_value js_pty_read_resume(napi_env env, napi_callback_info info) { return reader_call(env, info, 1); }
static napi_value js_pty_read_close(napi_env env, napi_callback_info info) { return reader_call(env, info, 2); }

void tx_register_exec(napi_env env, napi_value addon, napi_value constants) {
  tx_set_function(env, addon, "execProcess", js_exec_process);
  tx_set_function(env, addon, "takeParkedSessions", js_take_parked);
  tx_set_function(env, addon, "parkSessions", js_park_sessions);
  tx_set_function(env, addon, "sessionParkPair", js_session_park_pair);
  tx_set_function(env, addon, "ptyResize", js_pty_resize);
  tx_set_function(env, addon, "signalSession", js_signal_session);
  tx_set_function(env, addon, "ptyReadStart", js_pty_read_start);
  tx_set_function(env, addon, "ptyReadPause", js_pty_read_pause);
  tx_set_function(env, addon, "ptyReadResume", js_pty_read_resume);
  tx_set_function(env, addon, "ptyReadClose", js_pty_read_close);
  tx_set_constant(env, constants, "SESSION_PARK_FD", TX_SESSION_PARK_FD);
}
