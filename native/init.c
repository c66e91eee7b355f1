// tetrix-init: PID 1 of every workspace. Static, bound read-only at /.tetrix/init and owned by host root.
//   init [--hold] -- PROGRAM [ARGS...]
// Runs the workload in its own process group, forwards the polite signals to it, reaps every orphan,
// and when the workload ends writes one line to fd 3 ("exited <code>\n" or "signaled <signum>\n") and
// exits with the workload's code (128 + signal when signaled). Fd 4, when open, is the spawn report pipe
// (spawn-protocol.h): a failed execve of the workload is reported there, so the daemon hears
// "execve: ENOENT" rather than a silent 127. Fds 6 and 7, when open, are read ends of the workload's
// stdout and stderr that init only holds, so the pipes outlive a daemon restart (native/output.c).
// The workload sees only fds 0, 1 and 2.
// With --hold, init waits at the gate on fd 5 before forking the workload (spawn-protocol.h): the daemon
// attaches the network first. A gate closed without a byte makes init exit 125 and write no status.
#define _GNU_SOURCE
#include "spawn-protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
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
static void drop_output_read_ends(void) {
  close(TX_STDOUT_READ_FD);
  close(TX_STDERR_READ_FD);
}

__attribute__((noreturn)) static void exec_workload(char **argv, const sigset_t *original_mask) {
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

int main(int argc, char **argv) {
  // Not dumpable: the workload runs as the same uid, and without this it could open /proc/1/mem or
  // pidfd_getfd our fds (the host's exit-status file) with no ptrace capability at all. The workload
  // becomes dumpable again at its own execve, so debugging it still works.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  bool hold = argc > 1 && strcmp(argv[1], "--hold") == 0;
  int dashes = hold ? 2 : 1;
  if (argc < dashes + 2 || strcmp(argv[dashes], "--") != 0) {
    errno = EINVAL;
    die(STEP_INIT_ARGS, "usage: init [--hold] -- PROGRAM [ARGS...]");
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

  pid_t workload = fork();
  if (workload < 0) die(STEP_INIT_FORK, "fork");
  if (workload == 0) exec_workload(argv + dashes + 1, &original);
  setpgid(workload, workload);  // both sides, so neither races the other
  close(TX_REPORT_FD);

  int status = 0;
  for (;;) {
    struct signalfd_siginfo si;
    ssize_t n = read(sfd, &si, sizeof si);
    if (n < 0 && errno == EINTR) continue;
    if (n != (ssize_t)sizeof si) die(STEP_INIT_SIGNALFD, "read signalfd");
    int sig = (int)si.ssi_signo;
    if (sig == SIGCHLD) {
      if (reap(workload, &status)) break;
    } else if (is_forwarded(sig)) {
      kill(workload, sig);
    }
  }
  write_status(status);
  // Our exit kills whatever else is left in the PID namespace.
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
