// The spawn job: options copied off the JS heap by spawn-napi.c on the JS thread, then used by spawn.c
// on a libuv worker thread and in the child. releaseWorkload reuses it for its own half: the held fds in, a
// failure out.
#ifndef TETRIX_SPAWN_H
#define TETRIX_SPAWN_H

#include "tetrix.h"

#include <linux/filter.h>

typedef struct {
  char *source;  // host path
  char *target;  // inside the rootfs
  bool readonly;
} bind_mount;

typedef struct {
  // options
  char *rootfs;
  char *init_path;
  char *cwd;
  char *hostname;
  char **argv;  // "init", ["--hold"], ["--tasks"], ["--user", "UID:GID"], "--", workload argv..., NULL
  char **envp;  // NULL-terminated
  uint32_t uid_base, gid_base, id_count;
  char **cgroup_tasks;  // v1: one `tasks` file per hierarchy, joined by the child itself
  size_t cgroup_count;
  char *cgroup_dir;     // v2: the group the child is cloned into ("" = none)
  int stdout_fd, stderr_fd, status_fd;
  uint32_t pty_limit;   // devpts max= of the workspace's own instance
  int tasks_fd;  // -1, or init's end of the prebuild task channel: init runs `--tasks` with it as TX_TASKS_FD
  int output_read_fds[2];  // read ends init keeps for the next daemon (output.c), or -1
  int session_park_fds[2]; // the pair init holds for terminal sessions' masters (exec.c), or -1
  bind_mount *mounts;
  size_t mount_count;
  uint64_t keep_caps;
  struct sock_filter *seccomp;
  unsigned short seccomp_len;
  bool hold;  // init waits at the gate; spawn resolves with the held fds

  // prepared by the parent before the clone
  int last_cap;
  int *cgroup_fds;      // the opened cgroup_tasks, in order
  int cgroup_dir_fd;
  int devices_fd;       // a detached tmpfs holding this workspace's device nodes and boot_id
  char uid_map[64], gid_map[64];
  char devpts_data[128];

  // outcome
  int pid, pidfd;
  bool sys_bound;
  bool at_gate;                // init sent STEP_INIT_HELD
  int gate_fd, report_fd;      // the caller's ends while held; -1 otherwise
  char *fail_step;
  int fail_errno;

  napi_deferred deferred;
  napi_async_work work;
  char user_arg[256];    // init's "--user" value "UID:GID[:G1,G2...]" (inside the namespace), "" = root
} spawn_job;

spawn_job *tx_spawn_job_new(void);
void tx_spawn_job_free(spawn_job *job);
/** Records the first failure: step (copied) and errno. */
void tx_spawn_fail(spawn_job *job, const char *step, int err);
/** Worker thread: clone the workspace and hear it exec (or wait at the gate); a failure is in job->fail_step. */
void tx_spawn_run(spawn_job *job);
/** Worker thread: open the gate of a held spawn and hear the workload's execve. */
void tx_spawn_release(spawn_job *job);
/** Kills, reaps and closes what a spawn made, for a result that will not reach the caller. */
void tx_spawn_drop(spawn_job *job);

#endif
