// What the workspace child (spawn.c) and its PID 1 (init.c) report to the daemon before the workload
// runs. Each report travels over a close-on-exec pipe (libuv's trick): EOF means the workload exec'd;
// a record names the step that failed and its errno. A record with err == 0 is a notice, not a failure.
#ifndef TETRIX_SPAWN_PROTOCOL_H
#define TETRIX_SPAWN_PROTOCOL_H

#include <stdint.h>

typedef struct {
  int32_t step;   // enum tx_step
  int32_t index;  // which mount / device / path, for steps that repeat
  int32_t err;    // errno; 0 for a notice
} tx_report;

enum tx_step {
  STEP_UNSHARE_CGROUP = 1,
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
  STEP_INIT_BIND,
  STEP_INIT_READONLY,
  STEP_PROC,
  STEP_DEV,
  STEP_DEV_NODE,         // index: device table
  STEP_DEVPTS,
  STEP_DEV_SHM,
  STEP_DEV_LINK,         // index: link table
  STEP_SYS,
  STEP_SYS_BIND,         // notice (err 0): sysfs refused, host /sys bound read-only instead
  STEP_PIVOT_ROOT,
  STEP_UMOUNT_OLD_ROOT,
  STEP_CHDIR_ROOT,
  STEP_HOSTNAME,
  STEP_MASK,             // index: masked path table
  STEP_READONLY,         // index: read-only path table
  STEP_CHDIR_CWD,
  STEP_CAPBSET,
  STEP_CAP_AMBIENT,
  STEP_CAPSET,
  STEP_NO_NEW_PRIVS,
  STEP_OPEN_DEVNULL,
  STEP_DUP,              // index: target fd
  STEP_CLOSE_RANGE,
  STEP_SECCOMP,
  STEP_EXEC_INIT,
  // reported by init (init.c) on the inherited pipe
  STEP_INIT_ARGS,
  STEP_INIT_SIGNALFD,
  STEP_INIT_FORK,
  STEP_EXEC,             // the workload's execve
  STEP_COUNT
};

// The fds init finds at exec (see spawn.c set_up_fds).
#define TX_STATUS_FD 3
#define TX_REPORT_FD 4

#endif
