// spawn(opts): clone a workspace into fresh user, PID, mount, net, IPC, UTS and cgroup namespaces and
// exec the static init as its PID 1. The child part reads top to bottom in the order the kernel sees it
// (bubblewrap, runc's nsexec and crun do the same steps). Modelled on libuv's process.c: signals are
// blocked around the clone, the child does only async-signal-safe work (no malloc, no stdio: everything
// it needs is prepared by the parent before the clone), and failures travel back over a close-on-exec
// pipe as {step, errno}. EOF on that pipe means the workload exec'd.
// With opts.holdWorkload, spawn resolves once init waits at its gate instead, and releaseWorkload (the
// second half, below) opens the gate and hears the workload's execve (spawn-protocol.h).
#define _GNU_SOURCE
#include "spawn.h"
#include "spawn-protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

// ---------------------------------------------------------------------------------------------------
// Fixed tables: what every workspace gets.

typedef struct {
  const char *name;  // under /dev
  unsigned major, minor;
} dev_node;

// Made by the daemon for each workspace (make_device_tree), never the host's own inodes: an inotify
// watch on a shared /dev/null saw the host's and every neighbour's opens and writes (issue 13, item 8).
// Each is checked to be this exact char device before it is bound (CVE-2025-31133 class). /dev/tty
// stays: with no controlling terminal (setsid) it opens to ENXIO, as in runc.
static const dev_node dev_nodes[] = {
    {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
};

typedef struct {
  const char *name;    // under /dev
  const char *target;  // symlink text
} dev_link;

static const dev_link dev_links[] = {
    {"ptmx", "pts/ptmx"},
    {"fd", "/proc/self/fd"},
    {"stdin", "/proc/self/fd/0"},
    {"stdout", "/proc/self/fd/1"},
    {"stderr", "/proc/self/fd/2"},
};

// runc's default masked paths: files get /dev/null, directories an empty read-only tmpfs. Then what
// names the node: its boot arguments (the hypervisor's, on a VM), kernel config, boot config and the
// machine's DMI identity (vendor, product, serials).
static const char *const masked_paths[] = {
    "/proc/acpi",         "/proc/asound",      "/proc/kcore",       "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi",         "/sys/firmware",     "/sys/devices/virtual/powercap",
    "/proc/cmdline",      "/proc/config.gz",   "/proc/bootconfig",  "/sys/devices/virtual/dmi",
};

// The device tmpfs, while its nodes are being bound: under the workspace's /dev, gone before exec.
#define DEV_STAGE "/dev/.tetrix-devices"
#define BOOT_ID_FILE "boot_id"  // in the device tmpfs: a random boot_id of the workspace's own
#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

static const char *const readonly_paths[] = {
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

#define INIT_IN_ROOTFS "/.tetrix/init"

static void free_strv(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

void tx_spawn_job_free(spawn_job *job) {
  free(job->rootfs);
  free(job->init_path);
  free(job->cwd);
  free(job->hostname);
  free_strv(job->argv);
  free_strv(job->envp);
  free_strv(job->cgroup_tasks);
  free(job->cgroup_dir);
  free(job->cgroup_fds);
  for (size_t i = 0; i < job->mount_count; i++) {
    free(job->mounts[i].source);
    free(job->mounts[i].target);
  }
  free(job->mounts);
  free(job->seccomp);
  free(job->fail_step);
  free(job);
}

// ===================================================================================================
// The child. From the clone until execve: no malloc, no stdio, no locks, raw syscalls where glibc
// would coordinate with threads that do not exist in the child (setxid).

typedef struct {
  const spawn_job *job;
  int report_fd;  // where failures go; becomes TX_REPORT_FD once fds are arranged
  int gate_fd;    // read end of the gate, or -1; becomes TX_GATE_FD
} child_ctx;

__attribute__((noreturn)) static void child_fail(child_ctx *c, int step, int index, int err) {
  tx_report r = {.step = step, .index = index, .err = err};
  ssize_t n;
  do n = write(c->report_fd, &r, sizeof r);
  while (n < 0 && errno == EINTR);
  _exit(127);
}

static void child_notice(child_ctx *c, int step) {
  tx_report r = {.step = step, .index = 0, .err = 0};
  ssize_t n;
  do n = write(c->report_fd, &r, sizeof r);
  while (n < 0 && errno == EINTR);
}

#define CHECK(c, call, step, index)                      \
  do {                                                   \
    if ((call) < 0) child_fail((c), (step), (index), errno); \
  } while (0)

// "/proc/self/fd/<fd>" without snprintf.
static const char *fd_path(char buf[static 32], int fd) {
  static const char prefix[] = "/proc/self/fd/";
  char digits[12];
  int n = 0;
  memcpy(buf, prefix, sizeof prefix - 1);
  do digits[n++] = (char)('0' + fd % 10);
  while ((fd /= 10) > 0);
  for (int i = 0; i < n; i++) buf[sizeof prefix - 1 + i] = digits[n - 1 - i];
  buf[sizeof prefix - 1 + n] = '\0';
  return buf;
}

// Resolves path as if root were "/": symlinks and ".." cannot leave the rootfs, and /proc magic links
// are refused (CVE-2021-30465: mount targets swapped for symlinks).
static int open_in_root(int root, const char *path, uint64_t flags) {
  struct open_how how = {
      .flags = flags | O_CLOEXEC,
      .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
  };
  int fd;
  do fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
  while (fd < 0 && errno == EAGAIN);  // openat2 may ask to retry after a concurrent rename
  return fd;
}

static int set_mount_attr(int dirfd, const char *path, unsigned flags, uint64_t attr) {
  struct mount_attr ma = {.attr_set = attr};
  return (int)syscall(SYS_mount_setattr, dirfd, path, flags, &ma, sizeof ma);
}

// Node leaves SIGPIPE ignored and handlers installed; ignored dispositions survive execve.
static void reset_signal_dispositions(void) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL);  // EINVAL for KILL, STOP, glibc's own
}

static void wait_for_parent(int sync_fd) {
  char byte;
  ssize_t n;
  do n = read(sync_fd, &byte, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1) _exit(127);  // the parent gave up on us and will reap us
  close(sync_fd);
}

// The parent wrote uid_map/gid_map; become the namespace's root (a host uid in the unprivileged range)
// and shed the host's supplementary groups. Raw syscalls: glibc would try to signal threads that
// exist only in the parent.
static void become_root(child_ctx *c) {
  CHECK(c, syscall(SYS_setgroups, 0, NULL), STEP_SETGROUPS, 0);
  CHECK(c, syscall(SYS_setresgid, 0, 0, 0), STEP_SETRESGID, 0);
  CHECK(c, syscall(SYS_setresuid, 0, 0, 0), STEP_SETRESUID, 0);
}

// The rootfs must be a mount point for pivot_root; returns an O_PATH fd of it.
static int bind_rootfs(child_ctx *c) {
  const char *rootfs = c->job->rootfs;
  CHECK(c, mount(rootfs, rootfs, NULL, MS_BIND | MS_REC, NULL), STEP_BIND_ROOTFS, 0);
  int root = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
  CHECK(c, root, STEP_OPEN_ROOTFS, 0);
  return root;
}

// Makes the mount at path (resolved in root) read-only, nosuid, nodev, recursively.
static int seal_readonly(int root, const char *path) {
  int fd = open_in_root(root, path, O_PATH);
  if (fd < 0) return -1;
  int r = set_mount_attr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE,
                         MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
  int err = errno;
  close(fd);
  errno = err;
  return r;
}

static void mount_binds(child_ctx *c, int root) {
  char target[32];
  for (size_t i = 0; i < c->job->mount_count; i++) {
    const bind_mount *m = &c->job->mounts[i];
    int fd = open_in_root(root, m->target, O_PATH);
    CHECK(c, fd, STEP_MOUNT_OPEN, (int)i);
    CHECK(c, mount(m->source, fd_path(target, fd), NULL, MS_BIND | MS_REC, NULL), STEP_MOUNT_BIND, (int)i);
    close(fd);
    // Reopen: the old fd still names the directory underneath the new mount.
    if (m->readonly) CHECK(c, seal_readonly(root, m->target), STEP_MOUNT_READONLY, (int)i);
  }
}

// The only host executable the workspace ever runs, bound read-only and owned by host root, which the
// namespace cannot write (CVE-2019-5736).
static void mount_init(child_ctx *c, int root) {
  char target[32];
  struct stat st;
  int fd = open_in_root(root, INIT_IN_ROOTFS, O_PATH | O_NOFOLLOW);
  CHECK(c, fd, STEP_INIT_OPEN, 0);
  CHECK(c, fstat(fd, &st), STEP_INIT_STAT, 0);
  if (!S_ISREG(st.st_mode)) child_fail(c, STEP_INIT_OPEN, 0, EINVAL);
  CHECK(c, mount(c->job->init_path, fd_path(target, fd), NULL, MS_BIND, NULL), STEP_INIT_BIND, 0);
  close(fd);
  CHECK(c, seal_readonly(root, INIT_IN_ROOTFS), STEP_INIT_READONLY, 0);
}

// Before pivot_root: once the old root is detached the kernel refuses a new proc ("Mount too revealing").
static void mount_proc(child_ctx *c, int root) {
  char target[32];
  int fd = open_in_root(root, "/proc", O_PATH | O_DIRECTORY);
  CHECK(c, fd, STEP_PROC, 0);
  CHECK(c, mount("proc", fd_path(target, fd), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), STEP_PROC, 0);
  close(fd);
}

static void bind_dev_node(child_ctx *c, int dev, int stage, size_t i) {
  const dev_node *d = &dev_nodes[i];
  char source[32], target[32];
  struct stat st;
  int src = openat(stage, d->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  CHECK(c, src, STEP_DEV_NODE_OPEN, (int)i);
  CHECK(c, fstat(src, &st), STEP_DEV_NODE_STAT, (int)i);
  if (!S_ISCHR(st.st_mode) || st.st_rdev != makedev(d->major, d->minor)) child_fail(c, STEP_DEV_NODE_CHECK, (int)i, ENODEV);
  int dst = openat(dev, d->name, O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
  CHECK(c, dst, STEP_DEV_NODE_CREATE, (int)i);
  CHECK(c, mount(fd_path(source, src), fd_path(target, dst), NULL, MS_BIND, NULL), STEP_DEV_NODE_BIND, (int)i);
  close(dst);
  close(src);
}

static void mount_dev_fs(child_ctx *c, int dev, const char *name, int step, const char *fstype,
                         unsigned long flags, const char *data) {
  char target[32];
  if (mkdirat(dev, name, 0755) < 0 && errno != EEXIST) child_fail(c, step - 2, 0, errno);  // its _MKDIR
  int fd = openat(dev, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  CHECK(c, fd, step - 1, 0);  // its _OPEN
  CHECK(c, mount(fstype, fd_path(target, fd), fstype, flags, data), step, 0);
  close(fd);
}

// The daemon's device tmpfs, moved from its detached mount to DEV_STAGE: a tmpfs made inside our user
// namespace could hold no working device node (SB_I_NODEV), and a bind needs its source in our mount
// namespace. Returns an O_PATH fd of the staged tmpfs.
static int stage_devices(child_ctx *c, int dev) {
  const char *name = DEV_STAGE + sizeof "/dev/" - 1;
  CHECK(c, mkdirat(dev, name, 0700), STEP_DEV_STAGE_MKDIR, 0);
  int at = openat(dev, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  CHECK(c, at, STEP_DEV_STAGE_OPEN, 0);
  CHECK(c, syscall(SYS_move_mount, c->job->devices_fd, "", at, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        STEP_DEV_STAGE, 0);
  close(at);
  close(c->job->devices_fd);
  int stage = openat(dev, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);  // now the device tmpfs
  CHECK(c, stage, STEP_DEV_STAGE_REOPEN, 0);
  return stage;
}

// A minimal /dev of our own: a tmpfs with the harmless nodes, a private devpts and /dev/shm.
static void mount_dev(child_ctx *c, int root) {
  char target[32];
  int fd = open_in_root(root, "/dev", O_PATH | O_DIRECTORY);
  CHECK(c, fd, STEP_DEV_OPEN, 0);
  CHECK(c, mount("tmpfs", fd_path(target, fd), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k"), STEP_DEV, 0);
  close(fd);
  int dev = open_in_root(root, "/dev", O_PATH | O_DIRECTORY);  // now the tmpfs
  CHECK(c, dev, STEP_DEV_REOPEN, 0);

  int stage = stage_devices(c, dev);
  for (size_t i = 0; i < COUNT(dev_nodes); i++) bind_dev_node(c, dev, stage, i);
  close(stage);
  // Its own instance with its own max=: without it, one workspace took the node's whole pty pool.
  mount_dev_fs(c, dev, "pts", STEP_DEVPTS, "devpts", MS_NOSUID | MS_NOEXEC, c->job->devpts_data);
  mount_dev_fs(c, dev, "shm", STEP_DEV_SHM, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k");
  for (size_t i = 0; i < COUNT(dev_links); i++)
    CHECK(c, symlinkat(dev_links[i].target, dev, dev_links[i].name), STEP_DEV_LINK, (int)i);
  close(dev);
}

// A new netns owned by our userns may mount its own sysfs. Should the kernel refuse, fall back to the
// host's /sys bound read-only and tell the parent.
static void mount_sys(child_ctx *c, int root) {
  char target[32];
  int fd = open_in_root(root, "/sys", O_PATH | O_DIRECTORY);
  CHECK(c, fd, STEP_SYS_OPEN, 0);
  if (mount("sysfs", fd_path(target, fd), "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0) {
    close(fd);
    return;
  }
  if (errno != EPERM) child_fail(c, STEP_SYS, 0, errno);
  CHECK(c, mount("/sys", target, NULL, MS_BIND | MS_REC, NULL), STEP_SYS_HOST_BIND, 0);
  close(fd);
  fd = open_in_root(root, "/sys", O_PATH | O_DIRECTORY);
  CHECK(c, fd, STEP_SYS_REOPEN, 0);
  CHECK(c, set_mount_attr(fd, "", AT_EMPTY_PATH | AT_RECURSIVE,
                          MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC),
        STEP_SYS_READONLY, 0);
  close(fd);
  child_notice(c, STEP_SYS_BIND);
}

// pivot_root(".", ".") stacks the old root on the new one; detaching "." then drops the old root
// (bubblewrap and runc do the same), so no path leads back to the host.
static void enter_rootfs(child_ctx *c, int root) {
  CHECK(c, fchdir(root), STEP_FCHDIR_ROOTFS, 0);
  CHECK(c, syscall(SYS_pivot_root, ".", "."), STEP_PIVOT_ROOT, 0);
  CHECK(c, umount2(".", MNT_DETACH), STEP_UMOUNT_OLD_ROOT, 0);
  CHECK(c, chdir("/"), STEP_CHDIR_ROOT, 0);
  close(root);
}

static void mask_paths(child_ctx *c) {
  struct stat st;
  for (size_t i = 0; i < COUNT(masked_paths); i++) {
    const char *path = masked_paths[i];
    if (lstat(path, &st) < 0) {
      if (errno == ENOENT) continue;
      child_fail(c, STEP_MASK_LSTAT, (int)i, errno);
    }
    if (S_ISDIR(st.st_mode))
      CHECK(c, mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0"), STEP_MASK, (int)i);
    else
      CHECK(c, mount("/dev/null", path, NULL, MS_BIND, NULL), STEP_MASK, (int)i);
  }
}

// The workspace's own boot_id (boot_id names the node's boot, shared by every workspace on it), then
// the device tmpfs leaves: only the binds of its files stay.
static void bind_boot_id_and_unstage(child_ctx *c) {
  if (mount(DEV_STAGE "/" BOOT_ID_FILE, BOOT_ID_PATH, NULL, MS_BIND, NULL) < 0 && errno != ENOENT)
    child_fail(c, STEP_BOOT_ID, 0, errno);
  CHECK(c, umount2(DEV_STAGE, MNT_DETACH), STEP_DEV_UNSTAGE, 0);
  CHECK(c, rmdir(DEV_STAGE), STEP_DEV_UNSTAGE_RMDIR, 0);
}

static void make_paths_readonly(child_ctx *c) {
  for (size_t i = 0; i < COUNT(readonly_paths); i++) {
    const char *path = readonly_paths[i];
    if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) < 0) {
      if (errno == ENOENT) continue;  // e.g. no /proc/sysrq-trigger on this kernel
      child_fail(c, STEP_READONLY_BIND, (int)i, errno);
    }
    CHECK(c, set_mount_attr(AT_FDCWD, path, AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV),
          STEP_READONLY, (int)i);
  }
}

// Bounding set down to the kept caps, ambient and inheritable empty (CVE-2022-27650 class: inheritable
// caps would flow into the workload across execve).
static void drop_capabilities(child_ctx *c) {
  uint64_t keep = c->job->keep_caps;
  for (int cap = 0; cap <= c->job->last_cap; cap++)
    if (!(keep & (1ULL << cap))) CHECK(c, prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), STEP_CAPBSET, cap);
  CHECK(c, prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), STEP_CAP_AMBIENT, 0);

  struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  for (int i = 0; i < 2; i++) {
    uint32_t half = (uint32_t)(keep >> (32 * i));
    data[i].effective = half;
    data[i].permitted = half;
    data[i].inheritable = 0;
  }
  CHECK(c, syscall(SYS_capset, &header, data), STEP_CAPSET, 0);
  CHECK(c, prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), STEP_NO_NEW_PRIVS, 0);
}

// 0 = /dev/null, 1 and 2 = the caller's outputs, 3 = status for init, 4 = this report pipe for init,
// 5 = the gate when held, 6 and 7 = the output pipes' read ends init keeps (output.c) when given, 8 = the
// task channel, 9 and 10 = the session park pair (exec.c) when given; an absent one's number is closed. Everything else of the host's is closed here, not merely marked
// close-on-exec (CVE-2024-21626).
static void set_up_fds(child_ctx *c) {
  const spawn_job *job = c->job;
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  CHECK(c, devnull, STEP_OPEN_DEVNULL, 0);
  int from[TX_FD_COUNT] = {devnull, job->stdout_fd, job->stderr_fd, job->status_fd, c->report_fd, c->gate_fd,
                           job->output_read_fds[0], job->output_read_fds[1], job->tasks_fd,
                           job->session_park_fds[0], job->session_park_fds[1]};
  // Lift every source above the targets first, so no dup2 clobbers a source still to be copied.
  int lifted[TX_FD_COUNT];
  for (int i = 0; i < TX_FD_COUNT; i++) {
    lifted[i] = from[i] < 0 ? -1 : fcntl(from[i], F_DUPFD_CLOEXEC, TX_FD_COUNT);
    if (from[i] >= 0) CHECK(c, lifted[i], STEP_DUP_LIFT, i);
  }
  c->report_fd = lifted[TX_REPORT_FD];
  for (int i = 0; i < TX_FD_COUNT; i++) {
    if (lifted[i] >= 0) CHECK(c, dup2(lifted[i], i), STEP_DUP, i);
    else close(i);  // EBADF when nothing was there
  }
  c->report_fd = TX_REPORT_FD;
  CHECK(c, close_range(TX_FD_COUNT, ~0U, 0), STEP_CLOSE_RANGE, 0);
}

// lo comes up before the workload runs, as bubblewrap does: a workspace without a network still talks
// to itself. Root in the namespace owns its network namespace, so no help from the daemon is needed.
static void loopback_up(child_ctx *c) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  CHECK(c, s, STEP_LOOPBACK_SOCKET, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, "lo", 3);
  CHECK(c, ioctl(s, SIOCGIFFLAGS, &ifr), STEP_LOOPBACK_GET_FLAGS, 0);
  ifr.ifr_flags |= IFF_UP;
  CHECK(c, ioctl(s, SIOCSIFFLAGS, &ifr), STEP_LOOPBACK_SET_FLAGS, 0);
  close(s);
}

static void install_seccomp(child_ctx *c) {
  if (!c->job->seccomp_len) return;
  struct sock_fprog prog = {.len = c->job->seccomp_len, .filter = c->job->seccomp};
  CHECK(c, syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog), STEP_SECCOMP, 0);
}

// Joins the v1 groups by writing "0" (= the writer) to each `tasks` file the parent opened. Moving the
// caller's own thread skips the kernel's global cgroup_threadgroup_rwsem, whose write side waits for an
// RCU grace period; a pid written by the parent into cgroup.procs pays that wait (~9 ms per start here).
static void join_cgroups(child_ctx *c) {
  for (size_t i = 0; i < c->job->cgroup_count; i++) {
    int fd = c->job->cgroup_fds[i];
    CHECK(c, write(fd, "0", 1), STEP_JOIN_CGROUP, (int)i);
    close(fd);
  }
}

__attribute__((noreturn)) static void run_child(const spawn_job *job, int sync_fd, int report_fd, int gate_fd) {
  child_ctx c = {.job = job, .report_fd = report_fd, .gate_fd = gate_fd};
  // First: out of the daemon's session, so no path leads to its controlling terminal (TIOCSTI and
  // tcsetpgrp on /dev/tty reached the operator's shell; issue 13). We are not a group leader: cannot fail
  // with EPERM.
  CHECK(&c, setsid(), STEP_SETSID, 0);
  reset_signal_dispositions();  // all signals stay blocked through execve; init unblocks for the workload
  umask(022);
  join_cgroups(&c);             // while the parent writes the id maps
  wait_for_parent(sync_fd);     // uid/gid maps written

  CHECK(&c, unshare(CLONE_NEWCGROUP), STEP_UNSHARE_CGROUP, 0);  // after joining: the cgroup becomes our "/"

  // The host paths (rootfs, content, init) are resolved before become_root: until then our fsuid is
  // still host root (unmapped here, so it grants no capability over host inodes), which may traverse
  // the daemon's 0700 state directory as its owner; the workspace's own uid never gets a path into it.
  // Filesystems made inside the namespace (proc, the /dev tmpfs) come after: creating files on them
  // needs a uid that is mapped here (else EOVERFLOW).
  CHECK(&c, mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), STEP_MOUNT_PRIVATE, 0);
  int root = bind_rootfs(&c);
  mount_binds(&c, root);
  mount_init(&c, root);
  become_root(&c);
  loopback_up(&c);
  mount_proc(&c, root);
  mount_dev(&c, root);
  mount_sys(&c, root);
  enter_rootfs(&c, root);

  CHECK(&c, sethostname(job->hostname, strlen(job->hostname)), STEP_HOSTNAME, 0);
  mask_paths(&c);
  bind_boot_id_and_unstage(&c);
  make_paths_readonly(&c);
  CHECK(&c, chdir(job->cwd), STEP_CHDIR_CWD, 0);  // resolved inside the new root only

  drop_capabilities(&c);
  set_up_fds(&c);
  install_seccomp(&c);  // last: the filter may forbid everything above
  execve(INIT_IN_ROOTFS, job->argv, job->envp);
  child_fail(&c, STEP_EXEC_INIT, 0, errno);
}

// ===================================================================================================
// The parent, on a libuv worker thread.

void tx_spawn_fail(spawn_job *job, const char *step, int err) {
  if (job->fail_step) return;  // keep the first failure
  job->fail_step = strdup(step);
  job->fail_errno = err;
}

static int retry_write(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

static int write_file(const char *path, const char *content) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int r = retry_write(fd, content, strlen(content));
  int err = errno;
  close(fd);
  errno = err;
  return r;
}

static int read_last_cap(void) {
  char buf[16] = {0};
  int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n > 0) return atoi(buf);
  }
  return CAP_LAST_CAP;
}

// The bind target for init must exist in the rootfs. Created here, as host root, because the child
// (uid 0 of the namespace = an unprivileged host uid) may not write a root-owned rootfs. Resolved in
// the rootfs, so a planted symlink cannot point us at a host path.
static int prepare_init_mountpoint(const char *rootfs) {
  int root = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root < 0) return -1;
  int dir = -1, file = -1, err = 0;
  if (mkdirat(root, ".tetrix", 0755) < 0 && errno != EEXIST) goto out;
  struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                         .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
  dir = (int)syscall(SYS_openat2, root, ".tetrix", &how, sizeof how);
  if (dir < 0) goto out;
  file = openat(dir, "init", O_PATH | O_NOFOLLOW | O_CLOEXEC);  // O_PATH: an image's FIFO here must not block us
  if (file < 0 && errno == ENOENT) file = openat(dir, "init", O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0555);
  // Two spawns into one rootfs may race to create it: whoever lost finds it made.
  if (file < 0 && errno == EEXIST) file = openat(dir, "init", O_PATH | O_NOFOLLOW | O_CLOEXEC);
out:
  err = errno;
  if (file >= 0) close(file);
  if (dir >= 0) close(dir);
  close(root);
  errno = err;
  return file >= 0 ? 0 : -1;
}

static int fsconfig_string(int fs, const char *key, const char *value) {
  return (int)syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0);
}

// A random (version 4) UUID, formatted as the kernel formats boot_id.
static int random_boot_id(char out[static 38]) {
  unsigned char b[16];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) return -1;
  b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  snprintf(out, 38, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n", b[0], b[1], b[2], b[3],
           b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return 0;
}

static int write_boot_id(spawn_job *job) {
  char id[38];
  if (random_boot_id(id) < 0) return tx_spawn_fail(job, "devices: getrandom", errno), -1;
  int fd = openat(job->devices_fd, BOOT_ID_FILE, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
  if (fd < 0) return tx_spawn_fail(job, "devices: create " BOOT_ID_FILE, errno), -1;
  int r = retry_write(fd, id, strlen(id));
  if (r < 0) tx_spawn_fail(job, "devices: write " BOOT_ID_FILE, errno);
  close(fd);
  return r;
}

// The workspace's own device nodes, made here by host root: a detached tmpfs (fsopen/fsmount, so no
// host path and nothing to clean up: it goes with the workspace's mount namespace) holding one node of
// each dev_nodes entry and the workspace's boot_id. The child moves it into its namespace and binds
// the files (stage_devices). Mounted by the initial user namespace, so its nodes open (no SB_I_NODEV).
static int make_device_tree(spawn_job *job) {
  int fs = (int)syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
  if (fs < 0) return tx_spawn_fail(job, "devices: fsopen tmpfs", errno), -1;
  if (fsconfig_string(fs, "mode", "0711") < 0 || fsconfig_string(fs, "size", "64k") < 0 ||
      fsconfig_string(fs, "nr_inodes", "32") < 0 || syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
    tx_spawn_fail(job, "devices: fsconfig tmpfs", errno);
    close(fs);
    return -1;
  }
  job->devices_fd = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC);
  int err = errno;
  close(fs);
  if (job->devices_fd < 0) return tx_spawn_fail(job, "devices: fsmount", err), -1;
  for (size_t i = 0; i < COUNT(dev_nodes); i++) {
    const dev_node *d = &dev_nodes[i];
    // fchmodat after: the process umask (022) applies to mknodat, and everyone may use these.
    if (mknodat(job->devices_fd, d->name, S_IFCHR | 0666, makedev(d->major, d->minor)) < 0 ||
        fchmodat(job->devices_fd, d->name, 0666, 0) < 0) {
      char step[64];
      snprintf(step, sizeof step, "devices: mknod %s", d->name);
      return tx_spawn_fail(job, step, errno), -1;
    }
  }
  return write_boot_id(job);
}

static void kill_and_reap(int pidfd) {
  siginfo_t si;
  syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
  while (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0 && errno == EINTR) {
  }
}

static char *step_name(const spawn_job *job, const tx_report *r) {
  static const char *const names[STEP_COUNT] = {
      [STEP_SETSID] = "setsid",
      [STEP_UNSHARE_CGROUP] = "unshare cgroup",
      [STEP_SETGROUPS] = "setgroups",
      [STEP_SETRESGID] = "setresgid",
      [STEP_SETRESUID] = "setresuid",
      [STEP_MOUNT_PRIVATE] = "mount / private",
      [STEP_BIND_ROOTFS] = "bind rootfs",
      [STEP_OPEN_ROOTFS] = "open rootfs",
      [STEP_INIT_OPEN] = "open " INIT_IN_ROOTFS,
      [STEP_INIT_STAT] = "fstat " INIT_IN_ROOTFS,
      [STEP_INIT_BIND] = "mount " INIT_IN_ROOTFS,
      [STEP_INIT_READONLY] = "mount_setattr " INIT_IN_ROOTFS,
      [STEP_PROC] = "mount /proc",
      [STEP_DEV_OPEN] = "open /dev",
      [STEP_DEV] = "mount /dev",
      [STEP_DEV_REOPEN] = "open /dev (mounted)",
      [STEP_DEV_STAGE_MKDIR] = "mkdir " DEV_STAGE,
      [STEP_DEV_STAGE_OPEN] = "open " DEV_STAGE,
      [STEP_DEV_STAGE] = "move_mount " DEV_STAGE,
      [STEP_DEV_STAGE_REOPEN] = "open " DEV_STAGE " (moved)",
      [STEP_BOOT_ID] = "bind " BOOT_ID_PATH,
      [STEP_DEV_UNSTAGE] = "umount " DEV_STAGE,
      [STEP_DEV_UNSTAGE_RMDIR] = "rmdir " DEV_STAGE,
      [STEP_DEVPTS_MKDIR] = "mkdir /dev/pts",
      [STEP_DEVPTS_OPEN] = "open /dev/pts",
      [STEP_DEVPTS] = "mount /dev/pts",
      [STEP_DEV_SHM_MKDIR] = "mkdir /dev/shm",
      [STEP_DEV_SHM_OPEN] = "open /dev/shm",
      [STEP_DEV_SHM] = "mount /dev/shm",
      [STEP_SYS_OPEN] = "open /sys",
      [STEP_SYS] = "mount /sys",
      [STEP_SYS_HOST_BIND] = "bind host /sys",
      [STEP_SYS_REOPEN] = "open /sys (bound)",
      [STEP_SYS_READONLY] = "mount_setattr /sys",
      [STEP_FCHDIR_ROOTFS] = "fchdir rootfs",
      [STEP_PIVOT_ROOT] = "pivot_root",
      [STEP_UMOUNT_OLD_ROOT] = "umount old root",
      [STEP_CHDIR_ROOT] = "chdir /",
      [STEP_HOSTNAME] = "sethostname",
      [STEP_LOOPBACK_SOCKET] = "loopback: socket",
      [STEP_LOOPBACK_GET_FLAGS] = "loopback: ioctl SIOCGIFFLAGS lo",
      [STEP_LOOPBACK_SET_FLAGS] = "loopback: ioctl SIOCSIFFLAGS lo up",
      [STEP_CAP_AMBIENT] = "clear ambient capabilities",
      [STEP_CAPSET] = "capset",
      [STEP_NO_NEW_PRIVS] = "no_new_privs",
      [STEP_OPEN_DEVNULL] = "open /dev/null",
      [STEP_CLOSE_RANGE] = "close_range",
      [STEP_SECCOMP] = "seccomp",
      [STEP_EXEC_INIT] = "execve " INIT_IN_ROOTFS,
      [STEP_INIT_ARGS] = "init: arguments",
      [STEP_INIT_SIGNALFD] = "init: signalfd",
      [STEP_INIT_FORK] = "init: fork",
      [STEP_EXEC] = "execve",
      [STEP_INIT_HELD] = "init: held",
      [STEP_INIT_GATE] = "init: gate",
      [STEP_INIT_USER] = "init: switch to the workload's user",
  };
  char buf[PATH_MAX + 64];
  int i = r->index;
  switch (r->step) {
    case STEP_JOIN_CGROUP:
      if (i >= 0 && (size_t)i < job->cgroup_count) snprintf(buf, sizeof buf, "join cgroup %s", job->cgroup_tasks[i]);
      else snprintf(buf, sizeof buf, "join cgroup");
      break;
    case STEP_MOUNT_OPEN:
      if (i >= 0 && (size_t)i < job->mount_count) snprintf(buf, sizeof buf, "open %s", job->mounts[i].target);
      else snprintf(buf, sizeof buf, "open mount target");
      break;
    case STEP_MOUNT_BIND:
      if (i >= 0 && (size_t)i < job->mount_count) snprintf(buf, sizeof buf, "mount %s", job->mounts[i].target);
      else snprintf(buf, sizeof buf, "mount");
      break;
    case STEP_MOUNT_READONLY:
      if (i >= 0 && (size_t)i < job->mount_count) snprintf(buf, sizeof buf, "mount_setattr %s", job->mounts[i].target);
      else snprintf(buf, sizeof buf, "mount_setattr");
      break;
    case STEP_DEV_NODE_OPEN:
    case STEP_DEV_NODE_STAT:
    case STEP_DEV_NODE_CHECK:
    case STEP_DEV_NODE_CREATE:
    case STEP_DEV_NODE_BIND: {
      static const char *const verbs[] = {"open " DEV_STAGE "/", "fstat " DEV_STAGE "/", "check " DEV_STAGE "/",
                                           "create /dev/", "bind /dev/"};
      snprintf(buf, sizeof buf, "%s%s", verbs[r->step - STEP_DEV_NODE_OPEN],
               i >= 0 && (size_t)i < COUNT(dev_nodes) ? dev_nodes[i].name : "?");
      break;
    }
    case STEP_DEV_LINK:
      snprintf(buf, sizeof buf, "symlink /dev/%s", i >= 0 && (size_t)i < COUNT(dev_links) ? dev_links[i].name : "?");
      break;
    case STEP_MASK_LSTAT:
      snprintf(buf, sizeof buf, "lstat %s", i >= 0 && (size_t)i < COUNT(masked_paths) ? masked_paths[i] : "?");
      break;
    case STEP_MASK:
      snprintf(buf, sizeof buf, "mask %s", i >= 0 && (size_t)i < COUNT(masked_paths) ? masked_paths[i] : "?");
      break;
    case STEP_READONLY_BIND:
      snprintf(buf, sizeof buf, "bind %s", i >= 0 && (size_t)i < COUNT(readonly_paths) ? readonly_paths[i] : "?");
      break;
    case STEP_READONLY:
      snprintf(buf, sizeof buf, "readonly %s", i >= 0 && (size_t)i < COUNT(readonly_paths) ? readonly_paths[i] : "?");
      break;
    case STEP_CHDIR_CWD:
      snprintf(buf, sizeof buf, "chdir %s", job->cwd ? job->cwd : "cwd");
      break;
    case STEP_CAPBSET:
      snprintf(buf, sizeof buf, "drop capability %d", i);
      break;
    case STEP_DUP_LIFT:
      snprintf(buf, sizeof buf, "fcntl F_DUPFD for fd %d", i);
      break;
    case STEP_DUP:
      snprintf(buf, sizeof buf, "dup fd %d", i);
      break;
    default:
      snprintf(buf, sizeof buf, "%s",
               r->step > 0 && r->step < STEP_COUNT && names[r->step] ? names[r->step] : "child: unknown step");
  }
  return strdup(buf);
}

// Reads the child's reports until EOF (= the workload exec'd, or the child is gone), or until init says
// it waits at the gate.
static void collect_reports(spawn_job *job, int report_fd) {
  tx_report r;
  for (;;) {
    ssize_t n = read(report_fd, &r, sizeof r);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return;
    if (n != (ssize_t)sizeof r) {
      tx_spawn_fail(job, "read child report", n < 0 ? errno : EPROTO);
      return;
    }
    if (r.err == 0) {
      if (r.step == STEP_SYS_BIND) job->sys_bound = true;
      if (r.step == STEP_INIT_HELD) {
        job->at_gate = true;
        return;  // init writes nothing more until the gate opens
      }
      continue;
    }
    if (!job->fail_step) {
      job->fail_step = step_name(job, &r);
      job->fail_errno = r.err;
    }
  }
}

// Writes the id maps while the child waits on the sync pipe.
static int configure_child(spawn_job *job) {
  char path[64];
  // setgroups stays "allow": we are root in the parent namespace, so the kernel lets us write gid_map
  // anyway, and the workspace's root may then manage its own groups.
  snprintf(path, sizeof path, "/proc/%d/gid_map", job->pid);
  if (write_file(path, job->gid_map) < 0) {
    tx_spawn_fail(job, "write gid_map", errno);
    return -1;
  }
  snprintf(path, sizeof path, "/proc/%d/uid_map", job->pid);
  if (write_file(path, job->uid_map) < 0) {
    tx_spawn_fail(job, "write uid_map", errno);
    return -1;
  }
  // The kernel copies the daemon's OOM protection (OOMScoreAdjust=-999 under systemd) to children. Only a
  // write with CAP_SYS_RESOURCE also resets the floor the workload could lower itself back to.
  snprintf(path, sizeof path, "/proc/%d/oom_score_adj", job->pid);
  if (write_file(path, "0") < 0) {
    tx_spawn_fail(job, "write oom_score_adj", errno);
    return -1;
  }
  return 0;
}

// The caller's ends of a held spawn leave the job's cleanup: the gate's write end and the report pipe.
static void hand_over_gate(spawn_job *job, int gate_pipe[2], int report_pipe[2]) {
  job->gate_fd = gate_pipe[1];
  job->report_fd = report_pipe[0];
  gate_pipe[1] = report_pipe[0] = -1;
}

static void fail_path(spawn_job *job, const char *verb, const char *file) {
  char step[PATH_MAX + 16];
  snprintf(step, sizeof step, "%s %s", verb, file);
  tx_spawn_fail(job, step, errno);
}

// The cgroup files and directory are opened here, by host root, so the child needs no path to them.
static int open_cgroups(spawn_job *job) {
  job->cgroup_fds = calloc(job->cgroup_count ? job->cgroup_count : 1, sizeof(int));
  if (!job->cgroup_fds) return tx_spawn_fail(job, "calloc", ENOMEM), -1;
  for (size_t i = 0; i < job->cgroup_count; i++) job->cgroup_fds[i] = -1;
  for (size_t i = 0; i < job->cgroup_count; i++) {
    job->cgroup_fds[i] = open(job->cgroup_tasks[i], O_WRONLY | O_CLOEXEC);
    if (job->cgroup_fds[i] < 0) return fail_path(job, "open", job->cgroup_tasks[i]), -1;
  }
  if (job->cgroup_dir[0]) {
    job->cgroup_dir_fd = open(job->cgroup_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (job->cgroup_dir_fd < 0) return fail_path(job, "open", job->cgroup_dir), -1;
  }
  return 0;
}

static void close_cgroups(spawn_job *job) {
  for (size_t i = 0; job->cgroup_fds && i < job->cgroup_count; i++) {
    if (job->cgroup_fds[i] >= 0) close(job->cgroup_fds[i]);
    job->cgroup_fds[i] = -1;
  }
  if (job->cgroup_dir_fd >= 0) close(job->cgroup_dir_fd);
  job->cgroup_dir_fd = -1;
}

void tx_spawn_run(spawn_job *job) {
  int sync_pipe[2] = {-1, -1}, report_pipe[2] = {-1, -1}, gate_pipe[2] = {-1, -1};
  job->last_cap = read_last_cap();
  if (job->last_cap > 63) job->last_cap = 63;
  snprintf(job->uid_map, sizeof job->uid_map, "0 %u %u\n", job->uid_base, job->id_count);
  snprintf(job->gid_map, sizeof job->gid_map, "0 %u %u\n", job->gid_base, job->id_count);

  if (prepare_init_mountpoint(job->rootfs) < 0) {
    tx_spawn_fail(job, "prepare " INIT_IN_ROOTFS, errno);
    return;
  }
  if (open_cgroups(job) < 0) goto out;
  if (make_device_tree(job) < 0) goto out;
  // Close-on-exec everywhere: a child another thread clones meanwhile drops its copies at exec, so the
  // caller's close of the gate reaches init as EOF.
  if (pipe2(sync_pipe, O_CLOEXEC) < 0 || pipe2(report_pipe, O_CLOEXEC) < 0 ||
      (job->hold && pipe2(gate_pipe, O_CLOEXEC) < 0)) {
    tx_spawn_fail(job, "pipe", errno);
    goto out;
  }

  // Blocked signals keep a handler of ours (Node's) from running in the child before it resets them.
  sigset_t all, saved;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &saved);
  struct clone_args args = {
      .flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_PIDFD,
      .pidfd = (uint64_t)(uintptr_t)&job->pidfd,
      .exit_signal = SIGCHLD,
  };
  if (job->cgroup_dir_fd >= 0) {  // v2: born in its group, so no migration at all
    args.flags |= CLONE_INTO_CGROUP;
    args.cgroup = (uint64_t)job->cgroup_dir_fd;
  }
  long pid = syscall(SYS_clone3, &args, sizeof args);
  if (pid == 0) {
    close(sync_pipe[1]);
    close(report_pipe[0]);
    if (gate_pipe[1] >= 0) close(gate_pipe[1]);
    run_child(job, sync_pipe[0], report_pipe[1], gate_pipe[0]);
  }
  int clone_err = errno;
  pthread_sigmask(SIG_SETMASK, &saved, NULL);
  if (pid < 0) {
    tx_spawn_fail(job, "clone3", clone_err);
    goto out;
  }
  job->pid = (int)pid;
  close_cgroups(job);
  close(job->devices_fd);  // the child holds its own copy
  job->devices_fd = -1;
  close(sync_pipe[0]);
  close(report_pipe[1]);
  if (gate_pipe[0] >= 0) close(gate_pipe[0]);
  sync_pipe[0] = report_pipe[1] = gate_pipe[0] = -1;

  if (configure_child(job) == 0) {
    if (retry_write(sync_pipe[1], "1", 1) < 0) tx_spawn_fail(job, "release child", errno);
  }
  close(sync_pipe[1]);  // EOF releases a child we gave up on into _exit
  sync_pipe[1] = -1;
  collect_reports(job, report_pipe[0]);
  if (job->hold && !job->fail_step) {
    // EOF before the notice: init died without a word (killed from outside).
    if (!job->at_gate) tx_spawn_fail(job, "init: gate", EPIPE);
    else hand_over_gate(job, gate_pipe, report_pipe);
  }

out:
  close_cgroups(job);
  if (job->devices_fd >= 0) close(job->devices_fd);
  job->devices_fd = -1;
  for (int i = 0; i < 2; i++) {
    if (sync_pipe[i] >= 0) close(sync_pipe[i]);
    if (report_pipe[i] >= 0) close(report_pipe[i]);
    if (gate_pipe[i] >= 0) close(gate_pipe[i]);
  }
  if (job->fail_step && job->pidfd >= 0) {
    kill_and_reap(job->pidfd);
    close(job->pidfd);
    job->pidfd = -1;
  }
}

// What a rejected spawn must not leave behind (only reachable if the work was cancelled after the fact;
// tx_spawn_run cleans up its own failures).
void tx_spawn_drop(spawn_job *job) {
  if (job->gate_fd >= 0) close(job->gate_fd);
  if (job->report_fd >= 0) close(job->report_fd);
  job->gate_fd = job->report_fd = -1;
  if (job->pidfd >= 0) {
    kill_and_reap(job->pidfd);
    close(job->pidfd);
    job->pidfd = -1;
  }
}

spawn_job *tx_spawn_job_new(void) {
  spawn_job *job = calloc(1, sizeof *job);
  if (job) job->pid = job->pidfd = job->gate_fd = job->report_fd = job->cgroup_dir_fd = job->devices_fd = job->tasks_fd = -1;
  if (job) job->output_read_fds[0] = job->output_read_fds[1] = job->session_park_fds[0] = job->session_park_fds[1] = -1;
  return job;
}

// releaseWorkload(held): the second half of a held spawn. Opens the gate, then reads the report pipe as
// spawn would have: EOF = the workload exec'd, a record = what failed. Both fds are closed either way.
void tx_spawn_release(spawn_job *job) {
  // A write that fails (EPIPE: init is gone) says nothing will come on the report pipe, and reading it
  // after, say, EBADF could block on a live init: so read only after the byte went through.
  if (retry_write(job->gate_fd, "1", 1) < 0) tx_spawn_fail(job, "release workload", errno);
  close(job->gate_fd);
  job->gate_fd = -1;
  if (!job->fail_step) collect_reports(job, job->report_fd);
  close(job->report_fd);
  job->report_fd = -1;
}
