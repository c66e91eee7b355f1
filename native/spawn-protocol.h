// What the workspace child (spawn.c) and its PID 1 (init.c) report to the daemon before the workload
// runs. Each report travels over a close-on-exec pipe (libuv's trick): EOF means the workload exec'd;
// a record names the step that failed and its errno. A record with err == 0 is a notice, not a failure.
//
// The gate (spawn opts.holdWorkload): init is exec'd as `init --hold -- PROGRAM...` with the read end of
// a gate pipe as TX_GATE_FD. It does everything up to forking the workload, sends the notice
// STEP_INIT_HELD on TX_REPORT_FD, and blocks reading one byte from the gate. spawn() resolves on that
// notice and hands the caller the gate's write end and the report pipe's read end. Then:
//   one byte   -> init closes the gate and forks the workload; the report pipe goes on as before
//                 (EOF = the workload exec'd, a record = what failed, e.g. STEP_EXEC).
//   EOF        -> the daemon gave up: init exits TX_INIT_EXIT_ABANDONED and writes nothing to
//                 TX_STATUS_FD (no workload ran, so there is no status to tell).
// The workload never holds the gate: init closes it before the fork.
#ifndef TETRIX_SPAWN_PROTOCOL_H
#define TETRIX_SPAWN_PROTOCOL_H

#include <stdint.h>

typedef struct {
  int32_t step;   // enum tx_step
  int32_t index;  // which mount / device / path, for steps that repeat
  int32_t err;    // errno; 0 for a notice
} tx_report;

enum tx_step {
  STEP_SETSID = 1,        // a session of its own: no controlling terminal of the daemon's
  STEP_JOIN_CGROUP,       // index: opts.cgroupTasks[index]
  STEP_UNSHARE_CGROUP,
  STEP_SETGROUPS,
  STEP_SETRESGID,
  STEP_SETRESUID,
  STEP_MOUNT_PRIVATE,
  STEP_BIND_ROOTFS,
  STEP_OPEN_ROOTFS,
  STEP_MOUNT_OPEN,       // index: opts.mounts[index]
  STEP_MOUNT_BIND,
  STEP_MOUNT_READONLY,
  STEP_INIT_OPEN,
  STEP_INIT_STAT,
  STEP_INIT_BIND,
  STEP_INIT_READONLY,
  STEP_PROC,
  STEP_DEV_OPEN,
  STEP_DEV,
  STEP_DEV_REOPEN,
  STEP_DEV_STAGE_MKDIR,
  STEP_DEV_STAGE_OPEN,
  STEP_DEV_STAGE,        // move the daemon-made device tmpfs into the namespace
  STEP_DEV_STAGE_REOPEN,
  STEP_DEV_NODE_OPEN,    // index: device table (each dev node step names /dev/<name>)
  STEP_DEV_NODE_STAT,
  STEP_DEV_NODE_CHECK,   // the staged node is not the char device the table says: ENODEV
  STEP_DEV_NODE_CREATE,
  STEP_DEV_NODE_BIND,
  STEP_DEVPTS_MKDIR,     // mkdir, open, mount in this order (mount_dev_fs counts on it)
  STEP_DEVPTS_OPEN,
  STEP_DEVPTS,
  STEP_DEV_SHM_MKDIR,    // the same
  STEP_DEV_SHM_OPEN,
  STEP_DEV_SHM,
  STEP_DEV_LINK,         // index: link table
  STEP_SYS_OPEN,
  STEP_SYS,
  STEP_SYS_HOST_BIND,    // sysfs refused: bind the host's /sys
  STEP_SYS_REOPEN,
  STEP_SYS_READONLY,
  STEP_SYS_BIND,         // notice (err 0): sysfs refused, host /sys bound read-only instead
  STEP_FCHDIR_ROOTFS,
  STEP_PIVOT_ROOT,
  STEP_UMOUNT_OLD_ROOT,
  STEP_CHDIR_ROOT,
  STEP_HOSTNAME,
  STEP_LOOPBACK_SOCKET,
  STEP_LOOPBACK_GET_FLAGS,
  STEP_LOOPBACK_SET_FLAGS,
  STEP_MASK_LSTAT,       // index: masked path table
  STEP_MASK,             // index: masked path table
  STEP_BOOT_ID,          // bind the workspace's own boot_id
  STEP_DEV_UNSTAGE,      // detach the device tmpfs once its nodes are bound
  STEP_DEV_UNSTAGE_RMDIR,
  STEP_READONLY_BIND,    // index: read-only path table
  STEP_READONLY,         // index: read-only path table
  STEP_CHDIR_CWD,
  STEP_CAPBSET,
  STEP_CAP_AMBIENT,
  STEP_CAPSET,
  STEP_NO_NEW_PRIVS,
  STEP_OPEN_DEVNULL,
  STEP_DUP_LIFT,         // index: target fd (F_DUPFD above the targets)
  STEP_DUP,              // index: target fd
  STEP_CLOSE_RANGE,
  STEP_SECCOMP,
  STEP_EXEC_INIT,
  // reported by init (init.c) on the inherited pipe
  STEP_INIT_ARGS,
  STEP_INIT_SIGNALFD,
  STEP_INIT_FORK,
  STEP_EXEC,             // the workload's execve
  STEP_INIT_HELD,        // notice (err 0): init waits at the gate
  STEP_INIT_GATE,        // init: the gate fd is missing or reading it failed
  STEP_INIT_USER,        // init: setgroups/setresgid/setresuid to --user (an OCI image's User)
  STEP_COUNT
};

// The fds init finds at exec (see spawn.c set_up_fds).
#define TX_STATUS_FD 3
#define TX_REPORT_FD 4
#define TX_GATE_FD 5       // only with --hold
// Second read ends of the workload's stdout and stderr pipes (native/output.c), only when the daemon passes
// them: init holds them, never reads them, and closes them before it forks the workload or a task.
#define TX_STDOUT_READ_FD 6
#define TX_STDERR_READ_FD 7
#define TX_TASKS_FD 8      // only with --tasks: the prebuild task channel (init.c run_tasks)
// Both ends of the socket pair that parks terminal sessions' pty masters (native/exec.c parkSessions), only
// when the daemon passes them: init holds them, never reads them, and closes them in every child.
#define TX_SESSION_PARK_FD 9
#define TX_SESSION_PARK_PEER_FD 10
#define TX_FD_COUNT 11      // init's fds are 0..TX_FD_COUNT-1; every fd from here on is closed

// init's exit code when the gate closed without a byte (Docker's "the runtime itself failed" code;
// 127 stays init's own failures and a missing program).
#define TX_INIT_EXIT_ABANDONED 125

#endif
