// tetrix-init: PID 1 of every workspace. Static, bound read-only at /.tetrix/init and owned by host root.
//   init [--hold] -- PROGRAM [ARGS...]
// Leads the workspace's session (spawn.c calls setsid before the exec: no controlling terminal) and
// runs the workload in a process group of its own in it, forwards the polite signals to it, reaps every
// orphan, and when the workload ends writes one line to fd 3 ("exited <code>\n" or "signaled
// <signum>\n") and exits with the workload's code (128 + signal when signaled). Fd 4, when open, is
// the spawn report pipe (spawn-protocol.h): a failed execve of the workload is reported there, so the
// daemon hears "execve: ENOENT" rather than a silent 127. Fds 6 and 7, when open, are read ends of the
// workload's stdout and stderr that init only holds, so the pipes outlive a daemon restart
// (native/output.c). Fds 9 and 10, when open, park terminal sessions' pty masters across a daemon restart
// (native/exec.c); init never touches them either. The workload sees only fds 0, 1 and 2.
// With --hold, init waits at the gate on fd 5 before forking the workload (spawn-protocol.h): the daemon
// attaches the network first. A gate closed without a byte makes init exit 125 and write no status.
// With --tasks (prebuilds), init itself runs the tasks the daemon hands it over fd 8 (see run_tasks).
#define _GNU_SOURCE
#include "spawn-protocol.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

static void report(int step, int err) {
  tx_report r = {.step = step, .index = 0, .err = err};
  if (fcntl(TX_REPORT_FD, F_GETFD) < 0) return;  // run by hand: nobody listens
  while (write(TX_REPORT_FD, &r, sizeof r) < 0 && errno == EINTR) {
  }
}

__attribute__((noreturn)) static void die(int step, const char *what) {
  int err = errno;
  report(step, err);
  dprintf(2, "tetrix-init: %s: %s\n", what, strerror(err));
  _exit(127);
}

// The output pipes' second read ends (output.c) are init's alone: a workload holding one could read its
// own output away from the log.
// So is the session park pair (native/exec.c): a workload holding it could take the terminal sessions'
// pty masters.
static void drop_output_read_ends(void) {
  close(TX_STDOUT_READ_FD);
  close(TX_STDERR_READ_FD);
  close(TX_SESSION_PARK_FD);
  close(TX_SESSION_PARK_PEER_FD);
}

// --user UID:GID[:G1,G2...] (an OCI image's User, src/sandbox/user.ts): the workload and each task run as it,
// with those supplementary groups (the image's /etc/group membership, as Docker sets them); set in the
// child, so init itself stays the namespace's root. A non-root uid keeps no capabilities across execve
// (capabilities(7)), as under Docker.
#define MAX_USER_GROUPS 32
static bool run_as_user;
static uid_t user_uid;
static gid_t user_gid;
static gid_t user_groups[MAX_USER_GROUPS];
static size_t user_group_count;

static bool parse_id(const char **p, char stop, unsigned long *out) {
  char *end;
  *out = strtoul(*p, &end, 10);
  if (end == *p || *out > 65535 || (*end != stop && *end != 0)) return false;
  *p = end;
  return true;
}

static bool parse_user(const char *text) {
  unsigned long uid, gid, g;
  const char *p = text;
  if (!parse_id(&p, ':', &uid) || *p != ':') return false;
  p++;
  if (!parse_id(&p, ':', &gid)) return false;
  if (*p == ':') {
    for (p++; *p;) {
      if (user_group_count == MAX_USER_GROUPS || !parse_id(&p, ',', &g)) return false;
      user_groups[user_group_count++] = (gid_t)g;
      if (*p == ',') p++;
    }
  }
  run_as_user = true;
  user_uid = (uid_t)uid;
  user_gid = (gid_t)gid;
  return true;
}

static bool become_user(void) {
  if (!run_as_user) return true;
  return setgroups(user_group_count, user_groups) == 0 && setresgid(user_gid, user_gid, user_gid) == 0 &&
         setresuid(user_uid, user_uid, user_uid) == 0;
}

__attribute__((noreturn)) static void exec_workload(char **argv, const sigset_t *original_mask) {
  if (!become_user()) die(STEP_INIT_USER, "switch to --user");
  setpgid(0, 0);
  close(TX_STATUS_FD);                             // the status fd is init's alone
  drop_output_read_ends();
  fcntl(TX_REPORT_FD, F_SETFD, FD_CLOEXEC);        // EOF at exec tells the daemon we are running
  sigprocmask(SIG_SETMASK, original_mask, NULL);
  execvp(argv[0], argv);
  die(STEP_EXEC, "execve");
  _exit(127);
}

// The daemon's go-ahead: one byte on the gate. Signals stay queued on the signalfd meanwhile, so only
// SIGKILL or a closed gate ends a held init.
static void wait_at_gate(void) {
  char byte;
  ssize_t n;
  if (fcntl(TX_GATE_FD, F_GETFD) < 0) die(STEP_INIT_GATE, "gate fd");
  report(STEP_INIT_HELD, 0);
  do n = read(TX_GATE_FD, &byte, 1);
  while (n < 0 && errno == EINTR);
  if (n < 0) die(STEP_INIT_GATE, "read gate");
  close(TX_GATE_FD);  // before the fork: the workload never holds it
  if (n == 0) _exit(TX_INIT_EXIT_ABANDONED);  // no workload ran: nothing for the status fd
}

static bool is_forwarded(int sig) {
  for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
    if (forwarded[i] == sig) return true;
  return false;
}

static void write_status(int status) {
  char line[32];
  int n = WIFEXITED(status) ? snprintf(line, sizeof line, "exited %d\n", WEXITSTATUS(status))
                            : snprintf(line, sizeof line, "signaled %d\n", WTERMSIG(status));
  while (write(TX_STATUS_FD, line, (size_t)n) < 0 && errno == EINTR) {
  }
  close(TX_STATUS_FD);
}

// Reaps every exited child; returns true once the workload is among them.
static bool reap(pid_t workload, int *workload_status) {
  bool done = false;
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    if (pid == workload) {
      *workload_status = status;
      done = true;
    }
  }
  return done;
}

// ---------------------------------------------------------------------------------------------------
// Task mode (docs/prebuilds.md). The tasks of a prebuild run one at a time as children of init, over
// TX_TASKS_FD, a unix socket to the daemon that only init holds (close-on-exec, closed in every child):
//   init -> daemon   "ready <i>\n"          ask for task i
//   daemon -> init   u32 length (little-endian) + payload; the task's stdout and stderr ride on it (SCM_RIGHTS).
//                    payload: NUL-terminated "<argc>", cwd, argv..., then env "K=V"...; length 0: no task i
//   init -> daemon   "start <i>\n" once forked, "end <i> <code>\n" once it ended (code: exit or 128+signal)
// Why init: it is not dumpable, so no task (same uid, no CAP_SYS_PTRACE) can read its memory, environ or
// fds through /proc or pidfd_getfd; a task's env is in init only from its frame to its execve, and the
// status is what init saw in waitpid, never what a task wrote. Before the next task starts, everything
// the last one left behind is killed (kill(-1) from PID 1 spares only init): nothing of task i runs
// while task i+1 holds its secrets, which a same-uid process could otherwise read in /proc/<pid>/environ.

#define TASK_FRAME_MAX (8u << 20)

typedef struct {
  char *buf;      // the payload, wiped before it is freed
  uint32_t len;
  int out_fd, err_fd;
} task_frame;

static void wipe_frame(task_frame *f) {
  if (f->buf) {
    explicit_bzero(f->buf, f->len);
    free(f->buf);
  }
  if (f->out_fd >= 0) close(f->out_fd);
  if (f->err_fd >= 0) close(f->err_fd);
  *f = (task_frame){.buf = NULL, .len = 0, .out_fd = -1, .err_fd = -1};
}

static bool send_line(const char *fmt, int a, int b) {
  char line[64];
  int n = snprintf(line, sizeof line, fmt, a, b);
  const char *p = line;
  while (n > 0) {
    ssize_t w = send(TX_TASKS_FD, p, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= (int)w;
  }
  return true;
}

static bool read_exact(char *p, size_t len) {
  while (len > 0) {
    ssize_t n = read(TX_TASKS_FD, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= (size_t)n;
  }
  return true;
}

// The length, and the two fds attached to its first byte. False when the daemon is gone or lies.
static bool read_frame(task_frame *f) {
  uint32_t len;
  char control[CMSG_SPACE(sizeof(int) * 2)];
  struct iovec iov = {.iov_base = &len, .iov_len = sizeof len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
  ssize_t n;
  do n = recvmsg(TX_TASKS_FD, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  while (n < 0 && errno == EINTR);
  if (n != (ssize_t)sizeof len) return false;
  len = le32toh(len);
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int fds[2];
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    if (count != 2) {
      for (size_t i = 0; i < count; i++) close(((int *)CMSG_DATA(c))[i]);
      return false;
    }
    memcpy(fds, CMSG_DATA(c), sizeof fds);
    f->out_fd = fds[0];
    f->err_fd = fds[1];
  }
  if (len == 0) return true;
  if (len > TASK_FRAME_MAX || f->out_fd < 0 || (msg.msg_flags & MSG_CTRUNC)) return false;
  f->buf = malloc(len + 1);
  if (!f->buf) return false;
  f->len = len;
  f->buf[len] = '\0';
  return read_exact(f->buf, len) && f->buf[len - 1] == '\0';
}

// Splits the payload into argv (NULL-terminated), cwd and the task's own env; false when malformed.
static bool parse_frame(const task_frame *f, char ***argv, const char **cwd, char ***task_env) {
  size_t count = 0;
  for (uint32_t i = 0; i < f->len; i++) count += f->buf[i] == '\0';
  char **strs = calloc(count + 1, sizeof *strs);
  if (!strs) return false;
  char *p = f->buf;
  for (size_t i = 0; i < count; i++) {
    strs[i] = p;
    p += strlen(p) + 1;
  }
  char *end;
  unsigned long argc = count >= 2 ? strtoul(strs[0], &end, 10) : 0;
  if (count < 2 || *end != '\0' || argc == 0 || argc > count - 2) {
    free(strs);
    return false;
  }
  *cwd = strs[1];
  *argv = calloc(argc + 1, sizeof **argv);
  *task_env = calloc(count - 2 - argc + 1, sizeof **task_env);
  if (!*argv || !*task_env) return false;
  memcpy(*argv, strs + 2, argc * sizeof *strs);
  memcpy(*task_env, strs + 2 + argc, (count - 2 - argc) * sizeof *strs);
  free(strs);
  return true;
}

static bool same_name(const char *a, const char *b) {
  size_t n = strcspn(a, "=");
  return strncmp(a, b, n) == 0 && b[n] == '=';
}

// The workspace env (init's own) with the task's own variables over it.
static char **task_envp(char **task_env) {
  extern char **environ;
  size_t n = 0, m = 0;
  while (environ[n]) n++;
  while (task_env[m]) m++;
  char **envp = calloc(n + m + 1, sizeof *envp);
  if (!envp) return NULL;
  size_t k = 0;
  for (size_t i = 0; i < m; i++) envp[k++] = task_env[i];
  for (size_t i = 0; i < n; i++) {
    bool shadowed = false;
    for (size_t j = 0; j < m && !shadowed; j++) shadowed = same_name(task_env[j], environ[i]);
    if (!shadowed) envp[k++] = environ[i];
  }
  return envp;
}

// The task's child: its own stdout and stderr, its cwd, its env, then its argv. Failures go to its stderr.
__attribute__((noreturn)) static void exec_task(const task_frame *f, int index, const sigset_t *original_mask) {
  char **argv = NULL, **task_env = NULL, **envp = NULL;
  const char *cwd = NULL;
  setpgid(0, 0);
  close(TX_STATUS_FD);
  close(TX_TASKS_FD);
  if (dup2(f->out_fd, 1) < 0 || dup2(f->err_fd, 2) < 0) _exit(127);
  // After the dup2s: without output read ends, the task's own pipes may have arrived as fds 6 and 7.
  drop_output_read_ends();
  if (!parse_frame(f, &argv, &cwd, &task_env) || !(envp = task_envp(task_env))) {
    dprintf(2, "tetrix-init: task %d: malformed task\n", index);
    _exit(127);
  }
  if (!become_user()) {
    dprintf(2, "tetrix-init: task %d: switch to --user: %s\n", index, strerror(errno));
    _exit(127);
  }
  if (chdir(cwd) < 0) {
    dprintf(2, "tetrix-init: task %d: chdir %s: %s\n", index, cwd, strerror(errno));
    _exit(127);
  }
  sigprocmask(SIG_SETMASK, original_mask, NULL);
  execvpe(argv[0], argv, envp);
  dprintf(2, "tetrix-init: task %d: execve %s: %s\n", index, argv[0], strerror(errno));
  _exit(127);
}

// Kills and reaps whatever is left in the PID namespace but init (kill(2): -1 spares the caller's
// namespace init).
static void kill_leftovers(void) {
  kill(-1, SIGKILL);
  int status;
  while (waitpid(-1, &status, 0) > 0 || errno == EINTR) {
  }
}

// Waits for the task (or the workload), forwarding the polite signals to it; *stop is set once one came
// (no task after it).
static int wait_task(int sfd, pid_t task, bool *stop) {
  int status = 0;
  for (;;) {
    struct signalfd_siginfo si;
    ssize_t n = read(sfd, &si, sizeof si);
    if (n < 0 && errno == EINTR) continue;
    if (n != (ssize_t)sizeof si) die(STEP_INIT_SIGNALFD, "read signalfd");
    int sig = (int)si.ssi_signo;
    if (sig == SIGCHLD) {
      if (reap(task, &status)) return status;
    } else if (is_forwarded(sig)) {
      *stop = true;
      kill(task, sig);
    }
  }
}

static int exit_code_of(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs task 0, 1, ... until the daemon has no more, one fails, or a stop signal came. Returns the
// status to report: the last task's (exited 0 when there was none), or exited 125 when the daemon
// went away (no further task can get its env: the run cannot go on).
static int run_tasks(int sfd, const sigset_t *original_mask) {
  int status = 0;
  bool stop = false;
  fcntl(TX_TASKS_FD, F_SETFD, FD_CLOEXEC);
  for (int i = 0; !stop; i++) {
    task_frame f = {.buf = NULL, .len = 0, .out_fd = -1, .err_fd = -1};
    if (!send_line("ready %d\n", i, 0) || !read_frame(&f)) {
      wipe_frame(&f);
      return TX_INIT_EXIT_ABANDONED << 8;
    }
    if (f.len == 0) {
      wipe_frame(&f);
      break;
    }
    pid_t task = fork();
    if (task < 0) die(STEP_INIT_FORK, "fork");
    if (task == 0) exec_task(&f, i, original_mask);
    setpgid(task, task);
    wipe_frame(&f);  // the task's env leaves init's memory as soon as its child has it
    bool told = send_line("start %d\n", i, 0);
    status = wait_task(sfd, task, &stop);
    kill_leftovers();
    if (!told || !send_line("end %d %d\n", i, exit_code_of(status))) return TX_INIT_EXIT_ABANDONED << 8;
    if (status != 0) break;
  }
  return status;
}

int main(int argc, char **argv) {
  // Not dumpable: the workload runs as the same uid, and without this it could open /proc/1/mem or
  // pidfd_getfd our fds (the host's exit-status file) with no ptrace capability at all. The workload
  // becomes dumpable again at its own execve, so debugging it still works.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  int dashes = 1;
  bool hold = argc > dashes && strcmp(argv[dashes], "--hold") == 0;
  if (hold) dashes++;
  bool tasks = argc > dashes && strcmp(argv[dashes], "--tasks") == 0;
  if (tasks) dashes++;
  if (argc > dashes + 1 && strcmp(argv[dashes], "--user") == 0) {
    if (!parse_user(argv[dashes + 1])) {
      errno = EINVAL;
      die(STEP_INIT_ARGS, "--user takes UID:GID[:GROUPS] below 65536");
    }
    dashes += 2;
  }
  if (argc < dashes + (tasks ? 1 : 2) || strcmp(argv[dashes], "--") != 0) {
    errno = EINVAL;
    die(STEP_INIT_ARGS, "usage: init [--hold] [--tasks] [--user UID:GID] -- PROGRAM [ARGS...]");
  }
  // Every signal is blocked and read from a signalfd: no handlers, nothing unsafe runs asynchronously.
  // spawn.c already execs us with all signals blocked, so nothing sent before this point is lost.
  sigset_t all, original;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &original);
  sigemptyset(&original);  // the workload starts with no signal blocked
  int sfd = signalfd(-1, &all, SFD_CLOEXEC);
  if (sfd < 0) die(STEP_INIT_SIGNALFD, "signalfd");
  if (hold) wait_at_gate();
  if (tasks) {
    close(TX_REPORT_FD);  // init runs: spawn() resolves; a task's failure is that task's status
    int status = run_tasks(sfd, &original);
    write_status(status);
    return exit_code_of(status);
  }

  pid_t workload = fork();
  if (workload < 0) die(STEP_INIT_FORK, "fork");
  if (workload == 0) exec_workload(argv + dashes + 1, &original);
  setpgid(workload, workload);  // both sides, so neither races the other
  close(TX_REPORT_FD);

  bool stopped = false;  // the workload decides what a forwarded signal means
  int status = wait_task(sfd, workload, &stopped);
  write_status(status);
  // Our exit kills whatever else is left in the PID namespace.
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
