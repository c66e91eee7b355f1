// The escape battery: runs INSIDE a workspace, as its root, and tries the known ways out of a container.
// Each probe prints one line:  PROBE <name> <blocked|ESCAPED|UNKNOWN> <detail>
// and the run ends with:       battery: <n> probes, <e> escapes, <u> unknown
// A probe that cannot tell says UNKNOWN, which fails the battery like an escape does.
//
// Probes never do damage when they succeed: a write probe opens for writing and closes without writing,
// privileged calls get arguments the kernel rejects *after* its permission check (so success shows as a
// telltale errno), and a clock is set to the time it already has.
//
// The test (test/security/battery.test.ts) passes what the inside cannot know, in the environment:
//   TETRIX_BATTERY_HOST_NS        "cgroup:<ino>,ipc:<ino>,mnt:<ino>,net:<ino>,pid:<ino>,user:<ino>,uts:<ino>" of the host
//   TETRIX_BATTERY_MARKER         host path of a file holding TETRIX_BATTERY_TOKEN (in the host's /tmp)
//   TETRIX_BATTERY_SHM_MARKER     name of a file in the host's /dev/shm
//   TETRIX_BATTERY_NEIGHBOUR      path, inside a neighbouring workspace, of a file holding TETRIX_BATTERY_TOKEN
//   TETRIX_BATTERY_HOST_PID       a host pid (the test runner)
//   TETRIX_BATTERY_HOST_TCP       a host loopback TCP port that accepts connections
//   TETRIX_BATTERY_HOST_ABSTRACT  an abstract unix socket name listening in the host's network namespace
//   TETRIX_BATTERY_DAEMON_SOCKET  host path of the daemon's gRPC socket
//   TETRIX_BATTERY_TOKEN          the secret the markers hold
//   TETRIX_BATTERY_HOST_BOOT_ID   the host's /proc/sys/kernel/random/boot_id
//   TETRIX_BATTERY_HOST_DEVNODES  "null=<st_dev>:<st_ino>,zero=..." of the host's /dev nodes
//   TETRIX_BATTERY_PTY_LIMIT      the workspace's pty limit (devpts max=)
//   TETRIX_BATTERY_DEV_WATCH_MS   optional: how long the inotify probe watches /dev (default 1500)
//   TETRIX_BATTERY_STATE_DIR      host path of the daemon's state directory (no fd may name it)
//   TETRIX_BATTERY_REPORT         optional: a file (e.g. under /workspace) that gets a copy of the report
// Built static (gcc -static -O2) so it needs nothing from the image.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/fscrypt.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/reboot.h>
#include <linux/sched.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef PROC_SUPER_MAGIC
#define PROC_SUPER_MAGIC 0x9fa0
#endif
#ifndef SYSFS_MAGIC
#define SYSFS_MAGIC 0x62656572
#endif

enum outcome { BLOCKED, ESCAPED, UNKNOWN };
static const char *const OUTCOME[] = {"blocked", "ESCAPED", "UNKNOWN"};

typedef struct {
  enum outcome outcome;
  char detail[480];
} result;

static result verdict(enum outcome o, const char *fmt, ...) {
  result r = {.outcome = o};
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r.detail, sizeof r.detail, fmt, ap);
  va_end(ap);
  for (char *p = r.detail; *p; p++)
    if (*p == '\n') *p = ' ';
  return r;
}
#define BLOCKED(...) verdict(BLOCKED, __VA_ARGS__)
#define ESCAPED(...) verdict(ESCAPED, __VA_ARGS__)
#define UNKNOWN(...) verdict(UNKNOWN, __VA_ARGS__)

static const char *E(int err) {
  const char *name = strerrorname_np(err);
  return name ? name : "E?";
}

// ---- facts passed in by the test -------------------------------------------------------------------

static const char *env(const char *name) {
  const char *v = getenv(name);
  return v && *v ? v : NULL;
}

// The host's inode for a namespace type, from TETRIX_BATTERY_HOST_NS; 0 when not given.
static unsigned long host_ns(const char *type) {
  const char *list = env("TETRIX_BATTERY_HOST_NS");
  size_t len = strlen(type);
  for (const char *p = list; p && *p;) {
    if (!strncmp(p, type, len) && p[len] == ':') return strtoul(p + len + 1, NULL, 10);
    p = strchr(p, ',');
    if (p) p++;
  }
  return 0;
}

// "mnt:[4026531841]" -> 4026531841; 0 on failure.
static unsigned long ns_inode_of(const char *link) {
  char buf[64];
  ssize_t n = readlink(link, buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *open = strchr(buf, '[');
  return open ? strtoul(open + 1, NULL, 10) : 0;
}

// Reads up to cap-1 bytes of a file; -1 with errno on failure.
static ssize_t read_file(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, cap - 1);
  int err = errno;
  close(fd);
  errno = err;
  if (n >= 0) buf[n] = 0;
  return n;
}

// True when a readable file at path holds the token.
static bool holds_token(int dirfd, const char *path) {
  const char *token = env("TETRIX_BATTERY_TOKEN");
  char buf[256];
  int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  return token && strstr(buf, token);
}

// Walks ".." from a directory until it stops moving; true when that top is not our "/" (the fd reaches
// a tree above the workspace's root).
static bool walks_out_of_root(int dirfd, char *where, size_t cap) {
  struct stat root, cur, up;
  if (stat("/", &root) != 0 || fstat(dirfd, &cur) != 0) return false;
  int fd = dup(dirfd);
  for (int i = 0; i < 256; i++) {
    int parent = openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (parent < 0) break;
    fstat(parent, &up);
    close(fd);
    fd = parent;
    if (up.st_dev == cur.st_dev && up.st_ino == cur.st_ino) break;
    cur = up;
  }
  close(fd);
  snprintf(where, cap, "top of tree dev %u:%u ino %lu, our root dev %u:%u ino %lu", major(cur.st_dev),
           minor(cur.st_dev), (unsigned long)cur.st_ino, major(root.st_dev), minor(root.st_dev),
           (unsigned long)root.st_ino);
  return cur.st_dev != root.st_dev || cur.st_ino != root.st_ino;
}

// The marker path relative to a directory far below the host root: enough ".." to reach any root.
static void marker_from_anywhere(char *out, size_t cap) {
  const char *marker = env("TETRIX_BATTERY_MARKER");
  out[0] = 0;
  for (int i = 0; i < 48 && strlen(out) + 3 < cap; i++) strcat(out, "../");
  if (marker) strncat(out, marker + 1, cap - strlen(out) - 1);
}

// Refused with one of the listed errnos (0-terminated) -> blocked; anything else -> ESCAPED.
static result refused(const char *what, long rc, int err, const int *denials) {
  if (rc >= 0) return ESCAPED("%s succeeded (returned %ld)", what, rc);
  for (const int *d = denials; *d; d++)
    if (err == *d) return BLOCKED("%s: %s", what, E(err));
  return ESCAPED("%s got past the permission check: %s", what, E(err));
}
static const int EPERM_ONLY[] = {EPERM, 0};
static const int EPERM_OR_ENOSYS[] = {EPERM, ENOSYS, 0};
static const int WRITE_DENIED[] = {EROFS, EACCES, EPERM, ENOENT, ETXTBSY, 0};

// Opens for writing and closes at once: never writes.
static result not_writable(const char *path) {
  int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  int err = errno;
  if (fd >= 0) {
    close(fd);
    return ESCAPED("%s opened for writing", path);
  }
  for (const int *d = WRITE_DENIED; *d; d++)
    if (err == *d) return BLOCKED("%s: %s", path, E(err));
  return UNKNOWN("%s: unexpected %s", path, E(err));
}

// "nothing readable": absent, refused, or empty (a /dev/null or empty tmpfs mask).
static result not_readable(const char *path) {
  char buf[64];
  struct stat st;
  if (lstat(path, &st) != 0) return BLOCKED("%s: %s", path, E(errno));
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    if (!d) return BLOCKED("%s: %s", path, E(errno));
    struct dirent *e;
    int n = 0;
    char first[64] = "";
    while ((e = readdir(d))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      if (!n++) snprintf(first, sizeof first, "%s", e->d_name);
    }
    closedir(d);
    return n ? ESCAPED("%s lists %d entries (%s...)", path, n, first) : BLOCKED("%s: empty", path);
  }
  ssize_t n = read_file(path, buf, sizeof buf);
  if (n < 0) return BLOCKED("%s: %s", path, E(errno));
  if (n == 0) return BLOCKED("%s: reads empty (masked)", path);
  return ESCAPED("%s: read %zd bytes", path, n);
}

// ---- capabilities ----------------------------------------------------------------------------------

static bool status_field(const char *field, char *out, size_t cap) {
  static char buf[8192];
  if (read_file("/proc/self/status", buf, sizeof buf) < 0) return false;
  size_t len = strlen(field);
  for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    if (!strncmp(line, field, len) && line[len] == ':') {
      char *v = line + len + 1;
      while (*v == ' ' || *v == '\t') v++;
      size_t n = strcspn(v, "\n");
      snprintf(out, cap, "%.*s", (int)n, v);
      return true;
    }
  }
  return false;
}

static bool cap_mask(const char *field, unsigned long long *mask) {
  char v[64];
  if (!status_field(field, v, sizeof v)) return false;
  *mask = strtoull(v, NULL, 16);
  return true;
}

// Capabilities that would let a workspace reach the host's objects or widen the kernel's attack surface.
static const struct { int cap; const char *name; } DANGEROUS[] = {
    {CAP_DAC_READ_SEARCH, "DAC_READ_SEARCH"}, {CAP_LINUX_IMMUTABLE, "LINUX_IMMUTABLE"}, {CAP_NET_ADMIN, "NET_ADMIN"},
    {CAP_NET_RAW, "NET_RAW"}, {CAP_IPC_LOCK, "IPC_LOCK"}, {CAP_SYS_MODULE, "SYS_MODULE"}, {CAP_SYS_RAWIO, "SYS_RAWIO"},
    {CAP_SYS_PTRACE, "SYS_PTRACE"}, {CAP_SYS_PACCT, "SYS_PACCT"}, {CAP_SYS_ADMIN, "SYS_ADMIN"}, {CAP_SYS_BOOT, "SYS_BOOT"},
    {CAP_SYS_NICE, "SYS_NICE"}, {CAP_SYS_RESOURCE, "SYS_RESOURCE"}, {CAP_SYS_TIME, "SYS_TIME"},
    {CAP_SYS_TTY_CONFIG, "SYS_TTY_CONFIG"}, {CAP_MKNOD, "MKNOD"}, {CAP_LEASE, "LEASE"}, {CAP_AUDIT_CONTROL, "AUDIT_CONTROL"},
    {CAP_MAC_OVERRIDE, "MAC_OVERRIDE"}, {CAP_MAC_ADMIN, "MAC_ADMIN"}, {CAP_SYSLOG, "SYSLOG"}, {CAP_WAKE_ALARM, "WAKE_ALARM"},
    {CAP_BLOCK_SUSPEND, "BLOCK_SUSPEND"}, {CAP_AUDIT_READ, "AUDIT_READ"}, {CAP_PERFMON, "PERFMON"}, {CAP_BPF, "BPF"},
    {CAP_CHECKPOINT_RESTORE, "CHECKPOINT_RESTORE"},
};

static result probe_caps_bounding(void) {
  unsigned long long bnd, eff, prm;
  if (!cap_mask("CapBnd", &bnd) || !cap_mask("CapEff", &eff) || !cap_mask("CapPrm", &prm))
    return UNKNOWN("cannot read /proc/self/status");
  char found[256] = "";
  for (size_t i = 0; i < sizeof DANGEROUS / sizeof DANGEROUS[0]; i++) {
    if (bnd & (1ULL << DANGEROUS[i].cap)) snprintf(found + strlen(found), sizeof found - strlen(found), " %s", DANGEROUS[i].name);
  }
  if (found[0]) return ESCAPED("bounding set %016llx holds%s", bnd, found);
  if ((eff | prm) & ~bnd) return ESCAPED("effective %016llx / permitted %016llx outside bounding %016llx", eff, prm, bnd);
  return BLOCKED("bounding %016llx effective %016llx: no dangerous capability", bnd, eff);
}

// CVE-2022-27650 (crun), CVE-2022-29162 (runc): non-empty inheritable caps survive exec of file-cap binaries.
static result probe_caps_inheritable_ambient(void) {
  unsigned long long inh, amb;
  if (!cap_mask("CapInh", &inh) || !cap_mask("CapAmb", &amb)) return UNKNOWN("cannot read /proc/self/status");
  if (inh || amb) return ESCAPED("inheritable %016llx ambient %016llx", inh, amb);
  return BLOCKED("inheritable and ambient sets are empty");
}

static result probe_regain_cap_ambient(void) {
  long rc = prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_ADMIN, 0, 0);
  return refused("PR_CAP_AMBIENT_RAISE(CAP_SYS_ADMIN)", rc, errno, EPERM_ONLY);
}

static result probe_regain_cap_capset(void) {
  struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct data[2];
  if (syscall(SYS_capget, &hdr, data) != 0) return UNKNOWN("capget: %s", E(errno));
  data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective |= CAP_TO_MASK(CAP_SYS_ADMIN);
  data[CAP_TO_INDEX(CAP_SYS_ADMIN)].permitted |= CAP_TO_MASK(CAP_SYS_ADMIN);
  long rc = syscall(SYS_capset, &hdr, data);
  return refused("capset(+CAP_SYS_ADMIN)", rc, errno, EPERM_ONLY);
}

static result probe_no_new_privs(void) {
  char v[16];
  if (!status_field("NoNewPrivs", v, sizeof v)) return UNKNOWN("no NoNewPrivs in /proc/self/status");
  return atoi(v) == 1 ? BLOCKED("NoNewPrivs: 1 (setuid and file capabilities cannot raise privileges)")
                      : ESCAPED("NoNewPrivs: %s", v);
}

static result probe_seccomp_active(void) {
  char mode[16], filters[16] = "?";
  if (!status_field("Seccomp", mode, sizeof mode)) return UNKNOWN("no Seccomp in /proc/self/status");
  status_field("Seccomp_filters", filters, sizeof filters);
  return atoi(mode) == 2 ? BLOCKED("Seccomp: 2 (filter), %s filter(s)", filters) : ESCAPED("Seccomp: %s", mode);
}

// ---- identity --------------------------------------------------------------------------------------

static result id_map_check(const char *path) {
  char buf[512];
  if (read_file(path, buf, sizeof buf) <= 0) return UNKNOWN("%s: %s", path, E(errno));
  unsigned long inside, outside, count;
  char *p = buf;
  int n;
  char summary[128] = "";
  while (sscanf(p, "%lu %lu %lu%n", &inside, &outside, &count, &n) == 3) {
    if (outside == 0) return ESCAPED("%s maps %lu to host 0: %s", path, inside, buf);
    if (outside < 65536) return ESCAPED("%s maps onto host ids below 65536 (system users): %lu", path, outside);
    snprintf(summary + strlen(summary), sizeof summary - strlen(summary), "%s%lu->%lu x%lu", summary[0] ? ", " : "",
             inside, outside, count);
    p += n;
  }
  return summary[0] ? BLOCKED("%s: %s", path, summary) : UNKNOWN("%s: unreadable map \"%s\"", path, buf);
}
static result probe_uid_map(void) { return id_map_check("/proc/self/uid_map"); }
static result probe_gid_map(void) { return id_map_check("/proc/self/gid_map"); }

static result probe_rewrite_uid_map(void) {
  int fd = open("/proc/self/uid_map", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return BLOCKED("open uid_map for writing: %s", E(errno));
  ssize_t n = write(fd, "0 0 1\n", 6);
  int err = errno;
  close(fd);
  return n == 6 ? ESCAPED("rewrote uid_map to map host root") : BLOCKED("write uid_map: %s", E(err));
}

// Root of the workspace owns only its own range: a uid outside the map cannot be given away.
static result probe_chown_to_unmapped(void) {
  const char *path = "/tmp/tetrix-battery-chown";
  int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) return UNKNOWN("create %s: %s", path, E(errno));
  close(fd);
  static const uid_t ids[] = {65536, 100000, 1000000, 4294967294u};
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    if (chown(path, ids[i], ids[i]) == 0) {
      unlink(path);
      return ESCAPED("chown to uid %u (outside the map) succeeded", ids[i]);
    }
    if (errno != EINVAL && errno != EPERM) {
      int err = errno;
      unlink(path);
      return UNKNOWN("chown to %u: %s", ids[i], E(err));
    }
  }
  unlink(path);
  return BLOCKED("chown to unmapped ids (65536, 100000, 1000000, 4294967294): EINVAL");
}

static result probe_setuid_unmapped(void) {
  long rc = syscall(SYS_setresuid, 65536, 65536, 65536);
  static const int denied[] = {EINVAL, EPERM, 0};
  return refused("setresuid(65536)", rc, errno, denied);
}

// ---- namespaces ------------------------------------------------------------------------------------

static result ns_private(const char *type) {
  unsigned long host = host_ns(type);
  if (!host) return UNKNOWN("host %s namespace not given (TETRIX_BATTERY_HOST_NS)", type);
  char link[64];
  snprintf(link, sizeof link, "/proc/self/ns/%s", type);
  unsigned long mine = ns_inode_of(link);
  if (!mine) return UNKNOWN("readlink %s: %s", link, E(errno));
  return mine == host ? ESCAPED("%s namespace is the host's (%lu)", type, host)
                      : BLOCKED("own %s namespace %lu (host %lu)", type, mine, host);
}
static result probe_ns_mnt(void) { return ns_private("mnt"); }
static result probe_ns_pid(void) { return ns_private("pid"); }
static result probe_ns_net(void) { return ns_private("net"); }
static result probe_ns_ipc(void) { return ns_private("ipc"); }
static result probe_ns_uts(void) { return ns_private("uts"); }
static result probe_ns_user(void) { return ns_private("user"); }
static result probe_ns_cgroup(void) { return ns_private("cgroup"); }

static result probe_unshare_user(void) {
  if (unshare(CLONE_NEWUSER) != 0) return BLOCKED("unshare(CLONE_NEWUSER): %s", E(errno));
  // Got one: see how far it goes (full caps over a fresh userns, and a proc mount).
  int fd = open("/proc/self/setgroups", O_WRONLY);
  if (fd >= 0) {
    (void)!write(fd, "deny", 4);
    close(fd);
  }
  fd = open("/proc/self/uid_map", O_WRONLY);
  bool mapped = fd >= 0 && write(fd, "0 0 1", 5) == 5;
  if (fd >= 0) close(fd);
  return ESCAPED("unshare(CLONE_NEWUSER) succeeded (uid_map written: %s)", mapped ? "yes" : "no");
}

static result probe_clone_newuser(void) {
  long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) _exit(0);
  if (pid > 0) waitpid((pid_t)pid, NULL, 0);
  return refused("clone(CLONE_NEWUSER)", pid, errno, EPERM_ONLY);
}

static result probe_clone3_newuser(void) {
  struct clone_args args = {.flags = CLONE_NEWUSER, .exit_signal = SIGCHLD};
  long pid = syscall(SYS_clone3, &args, sizeof args);
  if (pid == 0) _exit(0);
  if (pid > 0) waitpid((pid_t)pid, NULL, 0);
  return refused("clone3(CLONE_NEWUSER)", pid, errno, EPERM_OR_ENOSYS);
}

static result probe_unshare_other_ns(void) {
  static const struct { int flag; const char *name; } kinds[] = {
      {CLONE_NEWNS, "NEWNS"}, {CLONE_NEWNET, "NEWNET"}, {CLONE_NEWPID, "NEWPID"}, {CLONE_NEWIPC, "NEWIPC"},
      {CLONE_NEWUTS, "NEWUTS"}, {CLONE_NEWCGROUP, "NEWCGROUP"}, {0x80 /* CLONE_NEWTIME */, "NEWTIME"},
  };
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    if (unshare(kinds[i].flag) == 0) return ESCAPED("unshare(CLONE_%s) succeeded", kinds[i].name);
    if (errno != EPERM) return ESCAPED("unshare(CLONE_%s) got past the filter: %s", kinds[i].name, E(errno));
  }
  return BLOCKED("unshare of NEWNS, NEWNET, NEWPID, NEWIPC, NEWUTS, NEWCGROUP, NEWTIME: EPERM");
}

// setns into every namespace file this workspace can see (its own processes' and any nsfs fd).
static result probe_setns_anything(void) {
  DIR *proc = opendir("/proc");
  if (!proc) return UNKNOWN("opendir /proc: %s", E(errno));
  struct dirent *e;
  int tried = 0;
  while ((e = readdir(proc))) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    static const char *types[] = {"mnt", "pid", "net", "ipc", "uts", "user", "cgroup", "time"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
      char path[96];
      snprintf(path, sizeof path, "/proc/%s/ns/%s", e->d_name, types[i]);
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      tried++;
      int rc = setns(fd, 0);
      int err = errno;
      close(fd);
      if (rc == 0) {
        closedir(proc);
        unsigned long host = host_ns(types[i]);
        char self[64];
        snprintf(self, sizeof self, "/proc/self/ns/%s", types[i]);
        if (host && ns_inode_of(self) == host) return ESCAPED("setns(%s) entered the host's namespace", path);
        return ESCAPED("setns(%s) succeeded (seccomp should refuse setns)", path);
      }
      if (err != EPERM) {
        closedir(proc);
        return ESCAPED("setns(%s) got past the filter: %s", path, E(err));
      }
    }
  }
  closedir(proc);
  return tried ? BLOCKED("setns refused for all %d namespace files visible: EPERM", tried)
               : UNKNOWN("no namespace file could be opened");
}

// ---- the host's files, processes and descriptors ---------------------------------------------------

static result probe_host_file_by_path(void) {
  const char *marker = env("TETRIX_BATTERY_MARKER");
  if (!marker) return UNKNOWN("TETRIX_BATTERY_MARKER not given");
  if (holds_token(AT_FDCWD, marker)) return ESCAPED("read the host's %s", marker);
  return BLOCKED("%s is not the host's file: %s", marker, E(errno));
}

static result probe_host_file_via_proc1_root(void) {
  const char *marker = env("TETRIX_BATTERY_MARKER");
  if (!marker) return UNKNOWN("TETRIX_BATTERY_MARKER not given");
  char path[512];
  snprintf(path, sizeof path, "/proc/1/root%s", marker);
  if (holds_token(AT_FDCWD, path)) return ESCAPED("read %s", path);
  int fd = open("/proc/1/root", O_PATH | O_DIRECTORY | O_CLOEXEC);
  char where[200] = "";
  if (fd >= 0 && walks_out_of_root(fd, where, sizeof where)) {
    close(fd);
    return ESCAPED("/proc/1/root leads above our root: %s", where);
  }
  if (fd >= 0) close(fd);
  return BLOCKED("/proc/1/root is the workspace's own root");
}

// Another workspace's files through /proc/<pid>/root, and the host's through every /proc/<pid>/root.
static result probe_proc_roots(void) {
  const char *marker = env("TETRIX_BATTERY_MARKER"), *neighbour = env("TETRIX_BATTERY_NEIGHBOUR");
  if (!marker || !neighbour) return UNKNOWN("TETRIX_BATTERY_MARKER / TETRIX_BATTERY_NEIGHBOUR not given");
  DIR *proc = opendir("/proc");
  if (!proc) return UNKNOWN("opendir /proc: %s", E(errno));
  struct dirent *e;
  int seen = 0;
  while ((e = readdir(proc))) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    seen++;
    char path[600];
    const char *targets[] = {marker, neighbour};
    for (int i = 0; i < 2; i++) {
      snprintf(path, sizeof path, "/proc/%s/root%s", e->d_name, targets[i]);
      if (holds_token(AT_FDCWD, path)) {
        closedir(proc);
        return ESCAPED("read %s", path);
      }
    }
  }
  closedir(proc);
  if (holds_token(AT_FDCWD, neighbour)) return ESCAPED("read the neighbour's %s directly", neighbour);
  return BLOCKED("neither the host's marker nor the neighbour's file under any of %d /proc/<pid>/root", seen);
}

static result probe_host_dev_shm(void) {
  const char *name = env("TETRIX_BATTERY_SHM_MARKER");
  if (!name) return UNKNOWN("TETRIX_BATTERY_SHM_MARKER not given");
  char path[300];
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  if (holds_token(AT_FDCWD, path)) return ESCAPED("/dev/shm is the host's: read %s", path);
  return BLOCKED("/dev/shm is private (%s: %s)", path, E(errno));
}

static result probe_host_processes(void) {
  char exe[256];
  ssize_t n = readlink("/proc/1/exe", exe, sizeof exe - 1);
  int count = 0;
  DIR *proc = opendir("/proc");
  if (!proc) return UNKNOWN("opendir /proc: %s", E(errno));
  struct dirent *e;
  while ((e = readdir(proc)))
    if (e->d_name[0] >= '1' && e->d_name[0] <= '9') count++;
  closedir(proc);
  if (count > 64) return ESCAPED("%d processes visible", count);
  if (n < 0) return BLOCKED("%d processes visible; pid 1's exe unreadable (%s)", count, E(errno));
  exe[n] = 0;
  if (!strstr(exe, "/.tetrix/")) return ESCAPED("pid 1 is %s, not the workspace's init", exe);
  return BLOCKED("%d processes visible, pid 1 is %s", count, exe);
}

static result probe_signal_host_pid(void) {
  const char *pid = env("TETRIX_BATTERY_HOST_PID");
  if (!pid) return UNKNOWN("TETRIX_BATTERY_HOST_PID not given");
  // The host pid is a number in the host's pid namespace; here it names nothing, or one of ours.
  char comm[64], path[64];
  snprintf(path, sizeof path, "/proc/%s/comm", pid);
  if (read_file(path, comm, sizeof comm) > 0 && strstr(comm, "node")) return ESCAPED("pid %s is visible as %s", pid, comm);
  if (read_file(path, comm, sizeof comm) > 0) return BLOCKED("pid %s here is one of the workspace's (%.20s)", pid, comm);
  return BLOCKED("host pid %s is not visible here", pid);
}

static void describe_fd(const char *dir, const char *name, char *out, size_t cap) {
  char link[300], path[300];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  ssize_t n = readlink(path, link, sizeof link - 1);
  link[n > 0 ? n : 0] = 0;
  snprintf(out, cap, "%s -> %s", name, n > 0 ? link : E(errno));
}

// Taken at startup, before the battery opens anything. CVE-2024-21626 leaked a host directory fd.
static char startup_fds[1024];
static int startup_extra_fds = -1;

static void snapshot_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return;
  int self = dirfd(d);
  startup_extra_fds = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    if (fd == self || fd <= 2) continue;
    char one[200];
    describe_fd("/proc/self/fd", e->d_name, one, sizeof one);
    snprintf(startup_fds + strlen(startup_fds), sizeof startup_fds - strlen(startup_fds), "%s%s",
             startup_extra_fds++ ? "; " : "", one);
  }
  closedir(d);
}

static result probe_leaked_fds_self(void) {
  if (startup_extra_fds < 0) return UNKNOWN("could not list /proc/self/fd at startup");
  if (startup_extra_fds > 0) return ESCAPED("the workload started with %d extra fds: %s", startup_extra_fds, startup_fds);
  // 0-2 are the workload's stdio: never a directory someone could walk up from.
  char relative[300];
  marker_from_anywhere(relative, sizeof relative);
  for (int fd = 0; fd <= 2; fd++) {
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) return ESCAPED("fd %d is a directory", fd);
    if (holds_token(fd, relative)) return ESCAPED("reached the host marker from fd %d", fd);
  }
  return BLOCKED("only 0, 1, 2 at startup, none a directory");
}

// init's descriptors through /proc/1/fd: unreadable, or nothing beyond stdio that reaches the host.
static result probe_leaked_fds_init(void) {
  DIR *d = opendir("/proc/1/fd");
  if (!d) return BLOCKED("/proc/1/fd: %s", E(errno));
  struct dirent *e;
  char seen[600] = "";
  char relative[300];
  marker_from_anywhere(relative, sizeof relative);
  result r = {.outcome = BLOCKED};
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char path[64], one[200], where[200];
    snprintf(path, sizeof path, "/proc/1/fd/%s", e->d_name);
    describe_fd("/proc/1/fd", e->d_name, one, sizeof one);
    snprintf(seen + strlen(seen), sizeof seen - strlen(seen), "%s%s", seen[0] ? "; " : "", one);
    struct stat st;
    if (stat(path, &st) != 0) continue;  // refused: fine
    if (S_ISDIR(st.st_mode)) {
      int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
      if (fd >= 0 && (walks_out_of_root(fd, where, sizeof where) || holds_token(fd, relative))) {
        close(fd);
        r = ESCAPED("init's %s leads outside the root (%s)", one, where);
        break;
      }
      if (fd >= 0) close(fd);
    }
    if (S_ISREG(st.st_mode) && atoi(e->d_name) > 2) {
      int fd = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK);
      if (fd >= 0) {
        close(fd);
        r = ESCAPED("init's host file %s opens for writing", one);
        break;
      }
    }
  }
  closedir(d);
  if (r.outcome == BLOCKED) r = BLOCKED("init's fds: %s", seen[0] ? seen : "none listed");
  return r;
}

// CVE-2024-21626: a working directory left on a host path.
static result probe_cwd_inside_root(void) {
  char cwd[512], where[200];
  if (!getcwd(cwd, sizeof cwd)) return ESCAPED("getcwd: %s (cwd is outside the root)", E(errno));
  if (cwd[0] != '/') return ESCAPED("getcwd says %s", cwd);
  static const char *dirs[] = {".", "/proc/self/cwd", "/proc/1/cwd"};
  for (size_t i = 0; i < 3; i++) {
    int fd = open(dirs[i], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) continue;
    bool out = walks_out_of_root(fd, where, sizeof where);
    close(fd);
    if (out) return ESCAPED("%s leads above the root: %s", dirs[i], where);
  }
  return BLOCKED("cwd %s; ., /proc/self/cwd and /proc/1/cwd stay under the root", cwd);
}

// ---- the init binary (host file, bound read-only) ---------------------------------------------------

#define INIT_PATH "/.tetrix/init"

// The init probes mean nothing without the init: say so instead of guessing.
#define REQUIRE_INIT()                                                                  \
  do {                                                                                  \
    struct stat init_st;                                                                \
    if (lstat(INIT_PATH, &init_st) != 0) return UNKNOWN("%s: %s", INIT_PATH, E(errno)); \
  } while (0)

static result probe_init_open_write(void) {
  REQUIRE_INIT();
  return not_writable(INIT_PATH);
}

// CVE-2019-5736: the runtime binary reopened for writing through /proc/<pid>/exe.
static result probe_init_via_proc_exe(void) {
  REQUIRE_INIT();
  return not_writable("/proc/1/exe");
}

// The battery's own binary: running, so the kernel refuses to open it for writing (ETXTBSY).
static result probe_proc_self_exe_write(void) { return not_writable("/proc/self/exe"); }

static result probe_init_truncate(void) {
  REQUIRE_INIT();
  struct stat st;
  if (stat(INIT_PATH, &st) != 0) return UNKNOWN("stat %s: %s", INIT_PATH, E(errno));
  // To its own size: harmless if it ever succeeds.
  if (truncate(INIT_PATH, st.st_size) == 0) return ESCAPED("truncate(%s) succeeded", INIT_PATH);
  for (const int *d = WRITE_DENIED; *d; d++)
    if (errno == *d) return BLOCKED("truncate: %s", E(errno));
  return UNKNOWN("truncate: %s", E(errno));
}

static result probe_init_rename_over(void) {
  REQUIRE_INIT();
  const char *tmp = "/.tetrix/.battery-replacement";
  int fd = open(tmp, O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
  if (fd < 0) {
    tmp = "/.battery-replacement";
    fd = open(tmp, O_CREAT | O_WRONLY | O_CLOEXEC, 0755);
  }
  if (fd < 0) return BLOCKED("cannot even create a file beside it: %s", E(errno));
  close(fd);
  int rc = rename(tmp, INIT_PATH);
  int err = errno;
  unlink(tmp);
  if (rc == 0) return ESCAPED("rename over %s succeeded", INIT_PATH);
  static const int denied[] = {EBUSY, EXDEV, EROFS, EACCES, EPERM, 0};
  return refused("rename over " INIT_PATH, -1, err, denied);
}

static result probe_init_unlink(void) {
  REQUIRE_INIT();
  static const int denied[] = {EBUSY, EROFS, EACCES, EPERM, 0};
  long rc = unlink(INIT_PATH);
  return refused("unlink " INIT_PATH, rc, errno, denied);
}

static result probe_init_hardlink(void) {
  REQUIRE_INIT();
  const char *link_path = "/tmp/tetrix-battery-init-link";
  if (link(INIT_PATH, link_path) == 0) {
    int fd = open(link_path, O_WRONLY | O_CLOEXEC);
    unlink(link_path);
    if (fd >= 0) {
      close(fd);
      return ESCAPED("a hard link to the init opens for writing");
    }
    return BLOCKED("hard link made, but not writable: %s", E(errno));
  }
  static const int denied[] = {EXDEV, EPERM, EACCES, EROFS, 0};
  return refused("link " INIT_PATH, -1, errno, denied);
}

static result probe_init_chmod(void) {
  REQUIRE_INIT();
  static const int denied[] = {EROFS, EPERM, EACCES, 0};
  long rc = chmod(INIT_PATH, 04755);
  return refused("chmod u+s " INIT_PATH, rc, errno, denied);
}

static result probe_init_remount_rw(void) {
  REQUIRE_INIT();
  long rc = mount(NULL, INIT_PATH, NULL, MS_REMOUNT | MS_BIND, NULL);
  return refused("remount " INIT_PATH " read-write", rc, errno, EPERM_ONLY);
}

// Taking over init (the runtime's own process, holding the exit-status fd) through /proc/1/mem.
static result probe_init_memory(void) {
  int fd = open("/proc/1/mem", O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    close(fd);
    return ESCAPED("/proc/1/mem opens read-write: the workload can rewrite init, which holds the host's exit-status fd");
  }
  return BLOCKED("/proc/1/mem: %s", E(errno));
}

// Stealing any of init's fds with pidfd_getfd: the host exit-status fd (3), its output read ends, and in
// a prebuild the task channel (8), on which the next task's secrets arrive.
static result probe_pidfd_getfd_init(void) {
  long pidfd = syscall(SYS_pidfd_open, 1, 0);
  if (pidfd < 0) return BLOCKED("pidfd_open(1): %s", E(errno));
  result r = BLOCKED("pidfd_getfd(init, 0..63): EPERM");
  for (int target = 0; target < 64; target++) {
    long fd = syscall(SYS_pidfd_getfd, pidfd, target, 0);
    int err = errno;
    if (fd >= 0) close((int)fd);
    if (fd >= 0 || err != EPERM) {
      char what[40];
      snprintf(what, sizeof what, "pidfd_getfd(init, %d)", target);
      r = refused(what, fd, err, EPERM_ONLY);
      break;
    }
  }
  close((int)pidfd);
  return r;
}

// What init was started with, and in a prebuild what passes through it: its environ and memory maps.
static result probe_init_environ(void) {
  static const char *paths[] = {"/proc/1/environ", "/proc/1/maps", "/proc/1/auxv", "/proc/1/syscall"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    char buf[64];
    ssize_t n = read_file(paths[i], buf, sizeof buf);
    if (n > 0) return ESCAPED("%s reads %zd bytes", paths[i], n);
  }
  return BLOCKED("/proc/1/environ, maps, auxv, syscall: nothing readable (init is not dumpable)");
}

static result probe_ptrace_init(void) {
  long rc = syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, 1, 0, 0);
  if (rc == 0) syscall(SYS_ptrace, 17 /* PTRACE_DETACH */, 1, 0, 0);
  return refused("ptrace(PTRACE_ATTACH, 1)", rc, errno, EPERM_ONLY);
}

static result probe_process_vm_readv_init(void) {
  char buf[8];
  struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
  long rc = syscall(SYS_process_vm_readv, 1, &local, 1, &remote, 1, 0);
  return refused("process_vm_readv(1)", rc, errno, EPERM_ONLY);
}

// ---- mounts ----------------------------------------------------------------------------------------

static result try_mount(const char *source, const char *fstype, const char *data) {
  const char *dir = "/tmp/tetrix-battery-mnt";
  mkdir(dir, 0700);
  long rc = mount(source, dir, fstype, 0, data);
  int err = errno;
  if (rc == 0) umount2(dir, MNT_DETACH);
  char what[96];
  snprintf(what, sizeof what, "mount -t %s", fstype);
  return refused(what, rc, err, EPERM_ONLY);
}
static result probe_mount_proc(void) { return try_mount("proc", "proc", NULL); }
static result probe_mount_sysfs(void) { return try_mount("sysfs", "sysfs", NULL); }
static result probe_mount_cgroup_v1(void) { return try_mount("cgroup", "cgroup", "memory"); }
static result probe_mount_cgroup2(void) { return try_mount("cgroup2", "cgroup2", NULL); }
static result probe_mount_block_device(void) {
  static const char *devs[] = {"/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/xvda"};
  for (size_t i = 0; i < 4; i++) {
    result r = try_mount(devs[i], "ext4", NULL);
    if (r.outcome != BLOCKED) return r;
  }
  return BLOCKED("mount of /dev/sda, vda, nvme0n1, xvda: EPERM");
}

static result probe_mount_tmpfs_over_proc(void) {
  long rc = mount("tmpfs", "/proc", "tmpfs", 0, NULL);
  if (rc == 0) umount2("/proc", MNT_DETACH);
  return refused("mount tmpfs over /proc", rc, errno, EPERM_ONLY);
}

static result probe_mount_api(void) {
  long fd = syscall(SYS_fsopen, "tmpfs", 0);
  if (fd >= 0) close((int)fd);
  result r = refused("fsopen(tmpfs)", fd, errno, EPERM_ONLY);
  if (r.outcome != BLOCKED) return r;
  fd = syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */);
  if (fd >= 0) close((int)fd);
  return refused("open_tree(/, OPEN_TREE_CLONE)", fd, errno, EPERM_ONLY);
}

// Unmounting the /dev/null bind over /proc/kcore would unmask it.
static result probe_unmask_kcore(void) {
  long rc = umount2("/proc/kcore", MNT_DETACH);
  return refused("umount /proc/kcore", rc, errno, EPERM_ONLY);
}

static result probe_pivot_root(void) {
  long rc = syscall(SYS_pivot_root, "/tmp", "/tmp");
  return refused("pivot_root", rc, errno, EPERM_ONLY);
}

// ---- devices ---------------------------------------------------------------------------------------

static result try_mknod(mode_t type, unsigned maj, unsigned min, const char *label) {
  const char *path = "/tmp/tetrix-battery-node";
  unlink(path);
  if (mknod(path, type | 0600, makedev(maj, min)) != 0) {
    static const int denied[] = {EPERM, EACCES, EROFS, 0};
    return refused(label, -1, errno, denied);
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  int err = errno;
  char buf[16];
  ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
  if (fd >= 0) close(fd);
  unlink(path);
  if (n > 0) return ESCAPED("%s: created and read %zd bytes", label, n);
  return BLOCKED("%s: node created but unusable (%s)", label, E(fd < 0 ? err : errno));
}
static result probe_mknod_disk(void) { return try_mknod(S_IFBLK, 8, 0, "mknod b 8 0 (sda)"); }
static result probe_mknod_dev_mem(void) { return try_mknod(S_IFCHR, 1, 1, "mknod c 1 1 (/dev/mem)"); }

// /dev holds the minimal set and nothing that reaches hardware or the kernel's memory.
static result probe_dev_inventory(void) {
  DIR *d = opendir("/dev");
  if (!d) return UNKNOWN("opendir /dev: %s", E(errno));
  struct dirent *e;
  char listed[400] = "";
  result r = {.outcome = BLOCKED};
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char path[300];
    struct stat st;
    snprintf(path, sizeof path, "/dev/%s", e->d_name);
    if (lstat(path, &st) != 0) continue;
    snprintf(listed + strlen(listed), sizeof listed - strlen(listed), "%s ", e->d_name);
    if (S_ISBLK(st.st_mode)) {
      r = ESCAPED("block device %s (%u:%u)", path, major(st.st_rdev), minor(st.st_rdev));
      break;
    }
    if (S_ISCHR(st.st_mode)) {
      unsigned ma = major(st.st_rdev), mi = minor(st.st_rdev);
      bool ok = (ma == 1 && (mi == 3 || mi == 5 || mi == 7 || mi == 8 || mi == 9)) || (ma == 5 && (mi == 0 || mi == 2)) ||
                (ma == 136);
      if (!ok) {
        r = ESCAPED("character device %s (%u:%u)", path, ma, mi);
        break;
      }
    }
  }
  closedir(d);
  if (r.outcome == BLOCKED) r = BLOCKED("/dev: %s", listed);
  return r;
}

static result probe_raw_devices(void) {
  static const char *devs[] = {"/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/sda", "/dev/vda",
                               "/dev/nvme0n1", "/dev/xvda", "/dev/dm-0", "/dev/loop0", "/dev/loop-control",
                               "/dev/fuse", "/dev/net/tun", "/dev/kvm", "/dev/mapper/control", "/dev/cpu/0/msr"};
  for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
    int fd = open(devs[i], O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
      close(fd);
      return ESCAPED("%s opens", devs[i]);
    }
  }
  return BLOCKED("mem, kmem, port, kmsg, disks, loop, fuse, tun, kvm, msr: none opens");
}

// TIOCSTI pushes input into a terminal: a shared host tty would run commands on the host.
static result probe_tiocsti(void) {
  char c = '\n';
  for (int fd = 0; fd <= 2; fd++) {
    if (ioctl(fd, TIOCSTI, &c) == 0) return ESCAPED("TIOCSTI on fd %d injected input", fd);
  }
  int tty = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (tty >= 0) {
    int rc = ioctl(tty, TIOCSTI, &c);
    close(tty);
    if (rc == 0) return ESCAPED("TIOCSTI on /dev/tty injected input");
  }
  return BLOCKED("no terminal to inject into (stdio and /dev/tty refuse TIOCSTI)");
}

// ---- /proc and /sys ----------------------------------------------------------------------------------

static result probe_proc_is_procfs(void) {
  struct stat st;
  struct statfs fs;
  if (lstat("/proc", &st) != 0 || !S_ISDIR(st.st_mode)) return ESCAPED("/proc is not a directory (a symlink?)");
  if (statfs("/proc", &fs) != 0) return UNKNOWN("statfs /proc: %s", E(errno));
  if ((unsigned long)fs.f_type != PROC_SUPER_MAGIC) return ESCAPED("/proc is not procfs (type %lx)", (unsigned long)fs.f_type);
  char self[32];
  ssize_t n = readlink("/proc/self", self, sizeof self - 1);
  if (n <= 0) return ESCAPED("/proc/self does not resolve");
  self[n] = 0;
  return atoi(self) == getpid() ? BLOCKED("/proc is a fresh procfs of our pid namespace (self = %s)", self)
                                : ESCAPED("/proc/self is %s but we are %d", self, getpid());
}

static result probe_dev_null_is_null(void) {
  struct stat st;
  if (lstat("/dev/null", &st) != 0) return UNKNOWN("lstat /dev/null: %s", E(errno));
  if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != 1 || minor(st.st_rdev) != 3)
    return ESCAPED("/dev/null is not the 1:3 character device (CVE-2025-31133 class)");
  return BLOCKED("/dev/null is char 1:3");
}

static result probe_read_kcore(void) { return not_readable("/proc/kcore"); }
static result probe_read_keys(void) { return not_readable("/proc/keys"); }
static result probe_read_timer_list(void) { return not_readable("/proc/timer_list"); }
static result probe_read_sched_debug(void) { return not_readable("/proc/sched_debug"); }
static result probe_read_sys_firmware(void) { return not_readable("/sys/firmware"); }
static result probe_read_proc_misc(void) {
  static const char *paths[] = {"/proc/acpi", "/proc/scsi", "/proc/latency_stats", "/proc/timer_stats",
                                "/sys/devices/virtual/powercap"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    result r = not_readable(paths[i]);
    if (r.outcome != BLOCKED) return r;
  }
  return BLOCKED("acpi, scsi, latency_stats, timer_stats, powercap: masked or absent");
}

// Kernel addresses (KASLR) must read as zeros to anyone without CAP_SYSLOG in the host's namespace.
static result probe_kallsyms(void) {
  FILE *f = fopen("/proc/kallsyms", "r");
  if (!f) return BLOCKED("/proc/kallsyms: %s", E(errno));
  char line[256];
  int lines = 0;
  result r = BLOCKED("/proc/kallsyms shows only zero addresses");
  while (fgets(line, sizeof line, f) && lines++ < 2000) {
    if (strtoull(line, NULL, 16) != 0) {
      r = ESCAPED("/proc/kallsyms leaks kernel addresses: %.40s", line);
      break;
    }
  }
  fclose(f);
  return r;
}

static result probe_syslog(void) {
  char buf[64];
  long rc = syscall(SYS_syslog, 3 /* SYSLOG_ACTION_READ_ALL */, buf, sizeof buf);
  return refused("syslog(READ_ALL)", rc, errno, EPERM_ONLY);
}

static result probe_write_sysrq(void) { return not_writable("/proc/sysrq-trigger"); }
static result probe_write_core_pattern(void) { return not_writable("/proc/sys/kernel/core_pattern"); }
static result probe_write_drop_caches(void) { return not_writable("/proc/sys/vm/drop_caches"); }

// Opens every regular file under a tree for writing (never writes). Returns the first that opened.
static bool find_writable(const char *dir, int depth, const char *skip_prefix, char *found, size_t cap, int *tried) {
  DIR *d = opendir(dir);
  if (!d) return false;
  struct dirent *e;
  bool hit = false;
  while (!hit && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (skip_prefix && !strncmp(path, skip_prefix, strlen(skip_prefix))) continue;
    struct stat st;
    if (lstat(path, &st) != 0) continue;
    if (S_ISDIR(st.st_mode) && depth > 0) {
      hit = find_writable(path, depth - 1, skip_prefix, found, cap, tried);
    } else if (S_ISREG(st.st_mode) && (st.st_mode & 0222)) {
      (*tried)++;
      int fd = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
      if (fd >= 0) {
        close(fd);
        snprintf(found, cap, "%s", path);
        hit = true;
      }
    }
  }
  closedir(d);
  return hit;
}

static result probe_write_proc_sys(void) {
  char found[512];
  int tried = 0;
  // Network sysctls belong to the workspace's own network namespace; everything else is the host's.
  if (find_writable("/proc/sys", 6, "/proc/sys/net", found, sizeof found, &tried)) return ESCAPED("%s opens for writing", found);
  return tried ? BLOCKED("none of %d writable-mode files under /proc/sys opens for writing", tried)
               : UNKNOWN("found nothing to try under /proc/sys");
}

static result probe_write_sys_kernel(void) {
  char found[512];
  int tried = 0;
  struct statvfs vfs;
  if (find_writable("/sys/kernel", 4, NULL, found, sizeof found, &tried)) return ESCAPED("%s opens for writing", found);
  if (find_writable("/sys/fs", 3, NULL, found, sizeof found, &tried)) return ESCAPED("%s opens for writing", found);
  if (statvfs("/sys", &vfs) == 0 && !(vfs.f_flag & ST_RDONLY)) return ESCAPED("/sys is mounted read-write");
  return BLOCKED("/sys read-only; none of %d files under /sys/kernel and /sys/fs opens for writing (uevent_helper included)", tried);
}

// CVE-2022-0492: a cgroup v1 release_agent the workspace can write runs as host root.
static result probe_release_agent(void) {
  char found[512];
  int reachable = 0;
  static const char *roots[] = {"/sys/fs/cgroup"};
  for (size_t r = 0; r < 1; r++) {
    DIR *d = opendir(roots[r]);
    if (!d) continue;
    struct dirent *e;
    while ((e = readdir(d))) {
      char path[512];
      snprintf(path, sizeof path, "%s/%s/release_agent", roots[r], e->d_name);
      if (access(path, F_OK) != 0) continue;
      reachable++;
      if (not_writable(path).outcome != BLOCKED) {
        snprintf(found, sizeof found, "%s", path);
        closedir(d);
        return ESCAPED("%s opens for writing", found);
      }
    }
    closedir(d);
  }
  if (access("/sys/fs/cgroup/release_agent", F_OK) == 0) {
    reachable++;
    if (not_writable("/sys/fs/cgroup/release_agent").outcome != BLOCKED) return ESCAPED("/sys/fs/cgroup/release_agent opens for writing");
  }
  return reachable ? BLOCKED("%d release_agent files visible, none writable", reachable)
                   : BLOCKED("no release_agent reachable (and mounting cgroup v1 is refused)");
}

static result probe_readonly_paths(void) {
  static const char *paths[] = {"/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs", "/proc/sysrq-trigger", "/proc/asound"};
  int checked = 0;
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    struct statvfs vfs;
    if (statvfs(paths[i], &vfs) != 0) continue;
    checked++;
    if (!(vfs.f_flag & ST_RDONLY)) return ESCAPED("%s is not mounted read-only", paths[i]);
  }
  return checked ? BLOCKED("%d of /proc/{sys,irq,bus,fs,sysrq-trigger,asound} present, all read-only", checked)
                 : UNKNOWN("none of the read-only paths exists");
}

// ---- privileged syscalls ---------------------------------------------------------------------------

static result probe_init_module(void) {
  long rc = syscall(SYS_init_module, NULL, 0, "");
  return refused("init_module", rc, errno, EPERM_ONLY);
}
static result probe_finit_module(void) {
  long rc = syscall(SYS_finit_module, -1, "", 0);
  return refused("finit_module", rc, errno, EPERM_ONLY);
}
static result probe_delete_module(void) {
  long rc = syscall(SYS_delete_module, "tetrix_battery_none", O_NONBLOCK);
  return refused("delete_module", rc, errno, EPERM_ONLY);
}
// 17 segments is over KEXEC_SEGMENT_MAX: a permitted caller gets EINVAL, nothing is loaded or unloaded.
static result probe_kexec_load(void) {
  long rc = syscall(SYS_kexec_load, 0, 17, NULL, 0);
  return refused("kexec_load", rc, errno, EPERM_ONLY);
}
static result probe_kexec_file_load(void) {
  long rc = syscall(SYS_kexec_file_load, -1, -1, 0, "", 0x80000000UL);
  return refused("kexec_file_load", rc, errno, EPERM_ONLY);
}
// A wrong second magic: a permitted caller gets EINVAL after the CAP_SYS_BOOT check, nothing powers off.
static result probe_reboot(void) {
  long rc = syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, 0, LINUX_REBOOT_CMD_POWER_OFF, NULL);
  return refused("reboot(POWER_OFF)", rc, errno, EPERM_ONLY);
}
static result probe_swapon(void) {
  long rc = syscall(SYS_swapon, "/tetrix-battery-no-such-file", 0);
  result r = refused("swapon", rc, errno, EPERM_ONLY);
  if (r.outcome != BLOCKED) return r;
  rc = syscall(SYS_swapoff, "/tetrix-battery-no-such-file");
  return refused("swapon and swapoff", rc, errno, EPERM_ONLY);
}
static result probe_acct(void) {
  long rc = syscall(SYS_acct, "/tetrix-battery-no-such-file");
  return refused("acct", rc, errno, EPERM_ONLY);
}
static result probe_iopl(void) {
  long rc = syscall(SYS_iopl, 3);
  result r = refused("iopl(3)", rc, errno, EPERM_ONLY);
  if (r.outcome != BLOCKED) return r;
  rc = syscall(SYS_ioperm, 0x80, 1, 1);
  return refused("iopl and ioperm", rc, errno, EPERM_ONLY);
}
static result probe_settimeofday(void) {
  // Both NULL: a permitted caller changes nothing and gets 0.
  long rc = syscall(SYS_settimeofday, NULL, NULL);
  return refused("settimeofday", rc, errno, EPERM_ONLY);
}
static result probe_clock_settime(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  long rc = syscall(SYS_clock_settime, CLOCK_REALTIME, &now);
  return refused("clock_settime(CLOCK_REALTIME, now)", rc, errno, EPERM_ONLY);
}
// adjtimex is allowed by the filter (reading the clock state is common); writing needs CAP_SYS_TIME in
// the host's namespace, which the kernel checks.
static result probe_adjtimex_write(void) {
  struct timex tx = {.modes = 0};
  if (adjtimex(&tx) < 0) return UNKNOWN("adjtimex(read): %s", E(errno));
  tx.modes = ADJ_STATUS;  // the status it already has
  long rc = adjtimex(&tx);
  return refused("adjtimex(ADJ_STATUS)", rc < 0 ? -1 : rc, errno, EPERM_ONLY);
}

static result probe_sethostname(void) {
  char before[65] = "";
  gethostname(before, sizeof before);
  if (sethostname("tetrix-battery", 14) != 0) {
    if (errno != EPERM) return ESCAPED("sethostname got past the filter: %s", E(errno));
    return BLOCKED("sethostname: EPERM (hostname stays %s)", before);
  }
  sethostname(before, strlen(before));
  result uts = ns_private("uts");
  if (uts.outcome != BLOCKED) return ESCAPED("sethostname succeeded in the host's UTS namespace");
  return ESCAPED("sethostname succeeded (only in the workspace's own UTS namespace, but the filter should refuse it)");
}

static result probe_setdomainname(void) {
  long rc = syscall(SYS_setdomainname, "tetrix-battery", 14);
  return refused("setdomainname", rc, errno, EPERM_ONLY);
}

static result probe_open_by_handle_at(void) {
  struct {
    struct file_handle fh;
    unsigned char bytes[128];
  } h = {.fh.handle_bytes = 128};
  int mount_id;
  if (syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &h.fh, &mount_id, 0) != 0)
    return BLOCKED("name_to_handle_at: %s", E(errno));
  int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  long fd = syscall(SYS_open_by_handle_at, root, &h.fh, O_RDONLY);
  close(root);
  if (fd >= 0) close((int)fd);
  return refused("open_by_handle_at", fd, errno, EPERM_ONLY);
}

static result probe_keyctl(void) {
  long rc = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
  return refused("keyctl(GET_KEYRING_ID)", rc, errno, EPERM_ONLY);
}
static result probe_add_key(void) {
  long rc = syscall(SYS_add_key, "user", "tetrix-battery", "x", 1, KEY_SPEC_PROCESS_KEYRING);
  result r = refused("add_key", rc, errno, EPERM_ONLY);
  if (r.outcome != BLOCKED) return r;
  rc = syscall(SYS_request_key, "user", "tetrix-battery", NULL, 0);
  return refused("add_key and request_key", rc, errno, EPERM_ONLY);
}

static result probe_bpf(void) {
  union bpf_attr attr = {.map_type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4, .max_entries = 1};
  long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
  if (fd >= 0) close((int)fd);
  return refused("bpf(BPF_MAP_CREATE)", fd, errno, EPERM_ONLY);
}

static result probe_perf_event_open(void) {
  struct perf_event_attr attr = {.type = PERF_TYPE_SOFTWARE, .size = sizeof attr, .config = PERF_COUNT_SW_CPU_CLOCK,
                                 .disabled = 1, .exclude_kernel = 1};
  long fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
  if (fd >= 0) close((int)fd);
  return refused("perf_event_open", fd, errno, EPERM_ONLY);
}

static result probe_userfaultfd(void) {
  long fd = syscall(SYS_userfaultfd, O_CLOEXEC | 1 /* UFFD_USER_MODE_ONLY */);
  if (fd >= 0) close((int)fd);
  return refused("userfaultfd", fd, errno, EPERM_ONLY);
}

// io_uring runs operations outside seccomp's view and has been a steady source of kernel exploits.
static result probe_io_uring(void) {
  unsigned char params[120] = {0};
  long fd = syscall(SYS_io_uring_setup, 1, params);
  if (fd >= 0) close((int)fd);
  return refused("io_uring_setup", fd, errno, EPERM_ONLY);
}

static result probe_personality(void) {
  long rc = syscall(SYS_personality, READ_IMPLIES_EXEC);
  result r = refused("personality(READ_IMPLIES_EXEC)", rc, errno, EPERM_ONLY);
  if (r.outcome != BLOCKED) return r;
  rc = syscall(SYS_personality, ADDR_NO_RANDOMIZE);
  return refused("personality(READ_IMPLIES_EXEC) and (ADDR_NO_RANDOMIZE)", rc, errno, EPERM_ONLY);
}

static result probe_setrlimit_above_hard(void) {
  // Lower the hard limit first (always allowed), so only CAP_SYS_RESOURCE can answer the raise.
  struct rlimit low = {512, 512}, more = {1024, 1024};
  if (setrlimit(RLIMIT_NOFILE, &low) != 0) return UNKNOWN("lowering RLIMIT_NOFILE: %s", E(errno));
  long rc = setrlimit(RLIMIT_NOFILE, &more);
  return refused("raise RLIMIT_NOFILE above its hard limit", rc, errno, EPERM_ONLY);
}

// An OOM-unkillable process would make the host's OOM killer pick someone else's.
static result probe_oom_score_adj(void) {
  int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return UNKNOWN("open oom_score_adj: %s", E(errno));
  ssize_t n = write(fd, "-1000", 5);
  int err = errno;
  close(fd);
  if (n == 5) return ESCAPED("oom_score_adj set to -1000 (unkillable)");
  static const int denied[] = {EACCES, EPERM, 0};
  return refused("oom_score_adj -1000", -1, err, denied);
}

// Real-time scheduling or a negative nice value would let a workspace starve the host's CPUs.
static result probe_realtime_scheduling(void) {
  struct sched_param sp = {.sched_priority = 1};
  long rc = sched_setscheduler(0, SCHED_FIFO, &sp);
  static const int denied[] = {EPERM, EACCES, 0};
  result r = refused("sched_setscheduler(SCHED_FIFO)", rc, errno, denied);
  if (r.outcome != BLOCKED) return r;
  rc = setpriority(PRIO_PROCESS, 0, -20);
  return refused("SCHED_FIFO and nice -20", rc, errno, denied);
}

// With a piped core_pattern the host runs its crash helper as host root on a workspace's core dump
// (the apport escapes); a workspace must then not be able to dump core.
static result probe_core_pattern_helper(void) {
  char pattern[256];
  if (read_file("/proc/sys/kernel/core_pattern", pattern, sizeof pattern) < 0) return UNKNOWN("core_pattern: %s", E(errno));
  pattern[strcspn(pattern, "\n")] = 0;
  struct rlimit rl;
  getrlimit(RLIMIT_CORE, &rl);
  if (pattern[0] != '|') return BLOCKED("core_pattern \"%s\" is a file in the workspace's own tree", pattern);
  if (rl.rlim_max == 0) return BLOCKED("core_pattern pipes to \"%s\", but RLIMIT_CORE is 0 and cannot be raised", pattern + 1);
  return ESCAPED("a crash here runs the host's \"%s\" as host root (RLIMIT_CORE hard %llu)", pattern + 1,
                 (unsigned long long)rl.rlim_max);
}

// ---- the 32-bit and x32 syscall ABIs: a classic way around a filter written for x86_64 ----------------

static result probe_int80_unshare(void) {
#if defined(__x86_64__)
  long ret;
  // i386 unshare is 310. A filter without the x86 arch kills here; one that has it must refuse.
  __asm__ volatile("int $0x80" : "=a"(ret) : "a"(310L), "b"((long)CLONE_NEWUSER) : "memory");
  if (ret == 0) return ESCAPED("int 0x80 unshare(CLONE_NEWUSER) succeeded");
  if (ret == -EPERM) return BLOCKED("int 0x80 unshare(CLONE_NEWUSER): EPERM");
  if (ret == -ENOSYS) return BLOCKED("int 0x80: ENOSYS (no 32-bit emulation)");
  return ESCAPED("int 0x80 unshare got past the filter: %s", E((int)-ret));
#else
  return BLOCKED("not x86_64: no int 0x80");
#endif
}

static result probe_x32_unshare(void) {
#if defined(__x86_64__)
  long rc = syscall(0x40000000 | 272 /* x32 unshare */, CLONE_NEWUSER);
  static const int denied[] = {EPERM, ENOSYS, 0};
  return refused("x32 unshare(CLONE_NEWUSER)", rc, errno, denied);
#else
  return BLOCKED("not x86_64: no x32 ABI");
#endif
}

// ---- network -----------------------------------------------------------------------------------------

static result probe_vsock(void) {
  long fd = syscall(SYS_socket, 40 /* AF_VSOCK */, SOCK_STREAM, 0);
  if (fd >= 0) close((int)fd);
  static const int denied[] = {EPERM, EAFNOSUPPORT, 0};
  return refused("socket(AF_VSOCK)", fd, errno, denied);
}

static result probe_raw_socket(void) {
  long fd = syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0);
  if (fd >= 0) close((int)fd);
  static const int denied[] = {EPERM, 0};
  return refused("socket(AF_PACKET, SOCK_RAW) (CAP_NET_RAW)", fd, errno, denied);
}

static result probe_net_admin(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return UNKNOWN("socket(AF_INET): %s", E(errno));
  struct ifreq ifr = {0};
  snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
  if (ioctl(s, SIOCGIFMTU, &ifr) != 0) {
    close(s);
    return UNKNOWN("SIOCGIFMTU lo: %s", E(errno));
  }
  long rc = ioctl(s, SIOCSIFMTU, &ifr);  // the MTU it already has
  int err = errno;
  result r = refused("SIOCSIFMTU lo", rc, err, EPERM_ONLY);
  if (r.outcome == BLOCKED) {
    struct rtentry rt = {0};
    struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst, *mask = (struct sockaddr_in *)&rt.rt_genmask;
    dst->sin_family = mask->sin_family = AF_INET;
    dst->sin_addr.s_addr = htonl(0x0a7b0000);  // 10.123.0.0/16
    mask->sin_addr.s_addr = htonl(0xffff0000);
    rt.rt_flags = RTF_UP;
    rt.rt_dev = "lo";
    rc = ioctl(s, SIOCADDRT, &rt);
    err = errno;
    if (rc == 0) ioctl(s, SIOCDELRT, &rt);
    r = refused("SIOCSIFMTU lo and SIOCADDRT", rc, err, EPERM_ONLY);
  }
  close(s);
  return r;
}

static result probe_host_loopback_tcp(void) {
  const char *port = env("TETRIX_BATTERY_HOST_TCP");
  if (!port) return UNKNOWN("TETRIX_BATTERY_HOST_TCP not given");
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return UNKNOWN("socket: %s", E(errno));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int rc = connect(s, (struct sockaddr *)&a, sizeof a);
  int err = errno;
  close(s);
  if (rc == 0) return ESCAPED("connected to the host's 127.0.0.1:%s", port);
  return BLOCKED("127.0.0.1:%s is not the host's: %s", port, E(err));
}

static result probe_host_abstract_socket(void) {
  const char *name = env("TETRIX_BATTERY_HOST_ABSTRACT");
  if (!name) return UNKNOWN("TETRIX_BATTERY_HOST_ABSTRACT not given");
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return UNKNOWN("socket: %s", E(errno));
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  size_t len = strlen(name);
  if (len + 1 > sizeof a.sun_path) len = sizeof a.sun_path - 1;
  memcpy(a.sun_path + 1, name, len);  // sun_path[0] = 0: the abstract namespace, per network namespace
  int rc = connect(s, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len));
  int err = errno;
  close(s);
  if (rc == 0) return ESCAPED("connected to the host's abstract socket @%s", name);
  return BLOCKED("abstract socket @%s is not reachable: %s", name, E(err));
}

static result probe_daemon_socket(void) {
  const char *path = env("TETRIX_BATTERY_DAEMON_SOCKET");
  if (!path) return UNKNOWN("TETRIX_BATTERY_DAEMON_SOCKET not given");
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return UNKNOWN("socket: %s", E(errno));
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  int rc = connect(s, (struct sockaddr *)&a, sizeof a);
  int err = errno;
  close(s);
  if (rc == 0) return ESCAPED("connected to the daemon's socket %s", path);
  return BLOCKED("daemon socket %s: %s", path, E(err));
}

// ---- December 2026 review, item 3: seccomp argument rules bypassed with the upper 32 bits, and socket
// families a workspace does not need; item 7: Linux AIO takes the host-wide aio-max-nr ---------------------
// socket's family is an int: the kernel reads the low 32 bits of the register, and a filter comparing all
// 64 let socket(0x100000028) make an AF_VSOCK socket (vsock ignores network namespaces). Only AF_UNIX,
// AF_INET, AF_INET6 and AF_NETLINK (NETLINK_ROUTE, NETLINK_SOCK_DIAG) may be created; everything else must
// be refused by the filter (EPERM), never answered by the family's own code.

static const unsigned long HIGH_BITS[] = {1UL << 32, 0xffffffff00000000UL};
#define AF_LIMIT 46  // AF_MAX on Linux 6.18

static bool family_allowed(int family) {
  return family == AF_UNIX || family == AF_INET || family == AF_INET6 || family == AF_NETLINK;
}

// One socket(2) or socketpair(2); a socket that gets through is closed at once.
static long try_socket(long nr, unsigned long family, int type, int protocol, int *err) {
  int sv[2] = {-1, -1};
  long rc = nr == SYS_socketpair ? syscall(nr, family, type, protocol, sv) : syscall(nr, family, type, protocol);
  *err = errno;
  if (nr == SYS_socket && rc >= 0) close((int)rc);
  if (nr == SYS_socketpair && rc == 0) close(sv[0]), close(sv[1]);
  return rc;
}

static result probe_socket_family_high_bits(void) {
  static const int families[] = {40 /* AF_VSOCK */, AF_PACKET, 38 /* AF_ALG */, 30 /* AF_TIPC */, AF_KEY, 44 /* AF_XDP */};
  for (size_t h = 0; h < sizeof HIGH_BITS / sizeof HIGH_BITS[0]; h++) {
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
      unsigned long family = HIGH_BITS[h] | (unsigned long)families[i];
      int err;
      for (int type = SOCK_STREAM; type <= SOCK_DGRAM; type++) {
        long rc = try_socket(SYS_socket, family, type, 0, &err);
        if (rc >= 0) return ESCAPED("socket(0x%lx, %d) made a family %d socket", family, type, families[i]);
        if (err != EPERM) return ESCAPED("socket(0x%lx, %d) reached the kernel: %s", family, type, E(err));
      }
    }
  }
  return BLOCKED("socket(<high bits> | AF_VSOCK, AF_PACKET, AF_ALG, AF_TIPC, AF_KEY, AF_XDP): EPERM");
}

static result probe_socket_families(void) {
  for (int family = 0; family < AF_LIMIT; family++) {
    if (family_allowed(family)) continue;
    int err;
    long rc = try_socket(SYS_socket, (unsigned long)family, SOCK_DGRAM, 0, &err);
    if (rc >= 0) return ESCAPED("socket(%d) succeeded: only AF_UNIX, AF_INET, AF_INET6, AF_NETLINK are allowed", family);
    if (err != EPERM) return ESCAPED("socket(%d) reached the family's code: %s", family, E(err));
  }
  return BLOCKED("every family but AF_UNIX, AF_INET, AF_INET6, AF_NETLINK: EPERM");
}

static result probe_netlink_protocols(void) {
  for (int protocol = 0; protocol < 32; protocol++) {
    if (protocol == 0 /* NETLINK_ROUTE */ || protocol == 4 /* NETLINK_SOCK_DIAG */) continue;
    // NETLINK_AUDIT answers as a kernel without audit does, so sudo and su carry on.
    int want = protocol == 9 ? EPROTONOSUPPORT : EPERM, err;
    long rc = try_socket(SYS_socket, AF_NETLINK, SOCK_RAW, protocol, &err);
    if (rc >= 0) return ESCAPED("socket(AF_NETLINK, %d) succeeded", protocol);
    if (err != want) return ESCAPED("socket(AF_NETLINK, %d) reached netlink: %s", protocol, E(err));
  }
  return BLOCKED("netlink beyond NETLINK_ROUTE and NETLINK_SOCK_DIAG: EPERM (NETLINK_AUDIT: EPROTONOSUPPORT)");
}

// socketpair creates sockets of its family too (and loads the family's module, e.g. TIPC's).
static result probe_socketpair_families(void) {
  for (size_t h = 0; h <= sizeof HIGH_BITS / sizeof HIGH_BITS[0]; h++) {
    for (int family = 0; family < AF_LIMIT; family++) {
      if (family == AF_UNIX) continue;
      unsigned long f = (h ? HIGH_BITS[h - 1] : 0) | (unsigned long)family;
      int err;
      long rc = try_socket(SYS_socketpair, f, SOCK_DGRAM, 0, &err);
      if (rc >= 0) return ESCAPED("socketpair(0x%lx) succeeded", f);
      if (err != EPERM) return ESCAPED("socketpair(0x%lx) reached the family's code: %s", f, E(err));
    }
  }
  return BLOCKED("socketpair of any family but AF_UNIX, high bits or not: EPERM");
}

// aio-max-nr (fs.aio-max-nr) is one count for the whole host and not namespaced: a workspace that can
// io_setup can take it all, and host root's io_setup then fails with EAGAIN.
static result probe_aio_setup(void) {
  unsigned long ctx = 0;
  long rc = syscall(SYS_io_setup, 1, &ctx);
  int err = errno;
  if (rc == 0) {
    syscall(SYS_io_destroy, ctx);
    return ESCAPED("io_setup succeeded: a workspace can take the host-wide aio-max-nr");
  }
  static const int denied[] = {ENOSYS, 0};
  return refused("io_setup", rc, err, denied);
}

// ---- issue 13 (December 2026 review): host terminals, the node's identity, shared device inodes, ptys --

// Item 1. A workload in the daemon's session could open /dev/tty (the operator's terminal when tetrixd ran
// from one), push commands into it with TIOCSTI and take its foreground with tcsetpgrp. It must lead no
// host session and have no controlling terminal; the probes act on every terminal a workload can name.

// Field 7 of /proc/self/stat (tty_nr), counted after the ")" that ends comm; -1 if unreadable.
static long stat_tty_nr(void) {
  char buf[1024];
  if (read_file("/proc/self/stat", buf, sizeof buf) <= 0) return -1;
  char *p = strrchr(buf, ')');
  if (!p) return -1;
  long field[5];
  // ") S ppid pgrp session tty_nr": state, then four numbers.
  if (sscanf(p + 1, " %*c %ld %ld %ld %ld", &field[0], &field[1], &field[2], &field[3]) != 4) return -1;
  return field[3];
}

static result probe_own_session(void) {
  pid_t sid = getsid(0);
  if (sid < 0) return UNKNOWN("getsid: %s", E(errno));
  // getsid names the leader in our pid namespace; 0 means the leader lives outside it (the host's session).
  if (sid == 0) return ESCAPED("our session is led from outside the workspace (the daemon's session)");
  long tty = stat_tty_nr();
  if (tty < 0) return UNKNOWN("cannot read tty_nr from /proc/self/stat");
  if (tty != 0) return ESCAPED("a controlling terminal %lu:%lu", (unsigned long)major(tty), (unsigned long)minor(tty));
  return BLOCKED("session %d is led inside the workspace; no controlling terminal", (int)sid);
}

static result probe_dev_tty(void) {
  int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd >= 0) {
    close(fd);
    return ESCAPED("/dev/tty opens: a controlling terminal is reachable");
  }
  if (errno == ENXIO || errno == ENOENT) return BLOCKED("/dev/tty: %s (no controlling terminal)", E(errno));
  return UNKNOWN("/dev/tty: unexpected %s", E(errno));
}

// Terminals by the names a workload could try; fds 0-2 come first.
static const char *const TERMINAL_PATHS[] = {"/dev/tty", "/dev/console", "/dev/tty0", "/dev/tty1", "/dev/ttyS0", "/dev/hvc0"};

typedef struct {
  int fd;
  char name[32];
} terminal;

// Every terminal the workload holds or can open, up to cap; the caller closes those it opened (index >= 3).
static int reachable_terminals(terminal *out, int cap) {
  int n = 0;
  for (int fd = 0; fd <= 2 && n < cap; fd++) {
    if (!isatty(fd)) continue;
    out[n].fd = fd;
    snprintf(out[n++].name, sizeof out[0].name, "fd %d", fd);
  }
  for (size_t i = 0; i < sizeof TERMINAL_PATHS / sizeof TERMINAL_PATHS[0] && n < cap; i++) {
    int fd = open(TERMINAL_PATHS[i], O_RDWR | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) continue;
    out[n].fd = fd;
    snprintf(out[n++].name, sizeof out[0].name, "%s", TERMINAL_PATHS[i]);
  }
  return n;
}

static void close_terminals(terminal *t, int n) {
  for (int i = 0; i < n; i++)
    if (t[i].fd > 2) close(t[i].fd);
}

static result probe_tiocsti_any_terminal(void) {
  terminal t[12];
  int n = reachable_terminals(t, 12);
  result r = BLOCKED("no terminal to inject into (%d reachable, none takes TIOCSTI)", n);
  for (int i = 0; i < n; i++) {
    // A NULL character: the kernel checks the right to inject before it reads the byte, so EFAULT says
    // "allowed" without pushing anything into anyone's terminal (dev.tty.legacy_tiocsti is 1 here).
    long rc = ioctl(t[i].fd, TIOCSTI, NULL);
    if (rc == 0 || errno == EFAULT) {
      r = ESCAPED("TIOCSTI on %s would inject input", t[i].name);
      break;
    }
  }
  close_terminals(t, n);
  return r;
}

static result probe_foreground_any_terminal(void) {
  signal(SIGTTOU, SIG_IGN);  // tcsetpgrp from a background group would stop us
  terminal t[12];
  int n = reachable_terminals(t, 12);
  result r = BLOCKED("no terminal whose foreground we can read or set (%d reachable)", n);
  for (int i = 0; i < n; i++) {
    pid_t pg = tcgetpgrp(t[i].fd);
    if (pg >= 0) {
      r = ESCAPED("tcgetpgrp on %s works (foreground %d): it is our controlling terminal", t[i].name, (int)pg);
      break;
    }
    // A group that cannot exist: ESRCH comes only after the controlling-terminal check (ENOTTY) passed,
    // so nothing is moved to the foreground even where the probe would have succeeded.
    pid_t none = 0x3ffffff0;
    if (ioctl(t[i].fd, TIOCSPGRP, &none) == 0 || errno == ESRCH || errno == EPERM) {
      r = ESCAPED("tcsetpgrp on %s got past the controlling-terminal check (%s)", t[i].name, E(errno));
      break;
    }
  }
  close_terminals(t, n);
  return r;
}

// Item 8. What names the node or its boot, and device inodes shared with the host and the neighbours
// (an inotify watch on a shared /dev/null sees everyone's opens and writes: an activity leak and a
// covert channel).

static result probe_proc_cmdline(void) { return not_readable("/proc/cmdline"); }
static result probe_proc_config_gz(void) { return not_readable("/proc/config.gz"); }
static result probe_proc_bootconfig(void) { return not_readable("/proc/bootconfig"); }
static result probe_sys_dmi(void) { return not_readable("/sys/devices/virtual/dmi/id"); }

static result probe_boot_id(void) {
  const char *host = env("TETRIX_BATTERY_HOST_BOOT_ID");
  char id[64];
  if (!host) return UNKNOWN("TETRIX_BATTERY_HOST_BOOT_ID not given");
  ssize_t n = read_file("/proc/sys/kernel/random/boot_id", id, sizeof id);
  if (n < 0) return BLOCKED("boot_id: %s", E(errno));
  if (n >= 36 && !strncmp(id, host, 36)) return ESCAPED("boot_id is the host's (%.36s)", id);
  if (n == 0) return BLOCKED("boot_id reads empty");
  return BLOCKED("boot_id %.36s is the workspace's own", id);
}

// TETRIX_BATTERY_HOST_DEVNODES: "null=<st_dev>:<st_ino>,zero=..." of the host's /dev nodes.
static result probe_dev_nodes_own_inodes(void) {
  const char *list = env("TETRIX_BATTERY_HOST_DEVNODES");
  if (!list) return UNKNOWN("TETRIX_BATTERY_HOST_DEVNODES not given");
  unsigned long null_dev = 0, null_ino = 0;
  int checked = 0;
  for (const char *p = list; p && *p;) {
    char name[32], path[64];
    unsigned long dev, ino;
    struct stat st;
    if (sscanf(p, "%31[a-z]=%lu:%lu", name, &dev, &ino) != 3) return UNKNOWN("bad TETRIX_BATTERY_HOST_DEVNODES");
    if (!strcmp(name, "null")) null_dev = dev, null_ino = ino;
    snprintf(path, sizeof path, "/dev/%s", name);
    if (stat(path, &st) == 0) {
      checked++;
      if (st.st_dev == dev && st.st_ino == ino) return ESCAPED("%s is the host's inode (dev %lu ino %lu)", path, dev, ino);
    }
    p = strchr(p, ',');
    if (p) p++;
  }
  // The masks over /proc files are binds of /dev/null: they must be ours too.
  struct stat st;
  if (null_ino && stat("/proc/kcore", &st) == 0 && st.st_dev == null_dev && st.st_ino == null_ino)
    return ESCAPED("/proc/kcore is masked with the host's /dev/null inode");
  return checked ? BLOCKED("%d device nodes, none the host's inode", checked) : UNKNOWN("no device node to check");
}

static const char *const WATCHED_DEVICES[] = {"null", "zero", "full", "random", "urandom", "tty"};

// Watches the device nodes while the test (and a neighbour workspace) keep opening and writing theirs;
// nothing in this workspace touches them meanwhile. Then our own write must show, or the watch proves
// nothing.
static result probe_dev_inotify_quiet(void) {
  const char *ms = env("TETRIX_BATTERY_DEV_WATCH_MS");
  int window = ms ? atoi(ms) : 1500;
  int in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (in < 0) return UNKNOWN("inotify_init1: %s", E(errno));
  int wd[6];
  for (size_t i = 0; i < 6; i++) {
    char path[32];
    snprintf(path, sizeof path, "/dev/%s", WATCHED_DEVICES[i]);
    wd[i] = inotify_add_watch(in, path, IN_ALL_EVENTS);
  }
  if (wd[0] < 0) return UNKNOWN("inotify_add_watch /dev/null: %s", E(errno));
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  struct pollfd pfd = {.fd = in, .events = POLLIN};
  int events = 0, first = -1;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (;;) {
    poll(&pfd, 1, 100);
    ssize_t n = read(in, buf, sizeof buf);
    for (char *p = buf; n > 0 && p < buf + n;) {
      struct inotify_event *e = (struct inotify_event *)p;
      for (int i = 0; i < 6; i++)
        if (e->wd == wd[i] && first < 0) first = i;
      events++;
      p += sizeof *e + e->len;
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 >= window) break;
  }
  if (events) {
    close(in);
    return ESCAPED("%d events on /dev/%s from outside the workspace (a shared inode)", events, first >= 0 ? WATCHED_DEVICES[first] : "?");
  }
  int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)!write(fd, "x", 1);
    close(fd);
  }
  poll(&pfd, 1, 1000);
  ssize_t n = read(in, buf, sizeof buf);
  close(in);
  if (n <= 0) return UNKNOWN("the watch did not even see our own write to /dev/null");
  return BLOCKED("no event from outside in %d ms on null, zero, full, random, urandom, tty; our own write shows", window);
}

// Item 7. One workspace held 3,071 ptys and the next got ENOSPC: each devpts instance has a max= of its own.
static result probe_pty_limit(void) {
  const char *v = env("TETRIX_BATTERY_PTY_LIMIT");
  if (!v) return UNKNOWN("TETRIX_BATTERY_PTY_LIMIT not given");
  int limit = atoi(v);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)limit + 16) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  int opened = 0, err = 0;
  while (opened <= limit) {  // one past the limit, and no more: never drain the node's pool
    if (open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC) < 0) {
      err = errno;
      break;
    }
    opened++;
  }
  if (opened > limit) return ESCAPED("opened %d ptys, more than the workspace's limit %d", opened, limit);
  if (opened < limit) return UNKNOWN("stopped at %d of %d ptys: %s", opened, limit, E(err));
  return BLOCKED("%d ptys, then %s", opened, E(err));
}

// ---- December 2026 review, item 8: host paths behind the workload's stdio ----------------------------
// readlink of fds 0-2 (and of init's fds, where the kernel lets us read them) must name no host path: not
// the daemon's state dir (TETRIX_BATTERY_STATE_DIR), not /var/lib or /tmp/tetrix*, and no path at all
// unless it is the same file seen from inside. Anonymous objects read as "pipe:[N]", "socket:[N]".

static bool stdio_names_host_path(const char *link, char *why, size_t cap) {
  char target[512];
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) return false;  // refused (init is not dumpable): nothing learnt
  target[n] = '\0';
  if (target[0] != '/') return false;  // pipe:[N], socket:[N], anon_inode:...
  const char *state = env("TETRIX_BATTERY_STATE_DIR");
  static const char *const host_prefixes[] = {"/var/lib/", "/tmp/tetrix"};
  bool host = state && strncmp(target, state, strlen(state)) == 0;
  for (size_t i = 0; i < sizeof host_prefixes / sizeof host_prefixes[0]; i++)
    host |= strncmp(target, host_prefixes[i], strlen(host_prefixes[i])) == 0;
  struct stat behind, named;
  bool same = stat(link, &behind) == 0 && stat(target, &named) == 0 && behind.st_dev == named.st_dev &&
              behind.st_ino == named.st_ino;
  if (!host && same) return false;  // e.g. /dev/null: a path of the workspace's own
  snprintf(why, cap, "%s -> %s", link, target);
  return true;
}

static result probe_stdio_host_paths(void) {
  char why[600], link[64];
  for (int fd = 0; fd <= 2; fd++) {
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    if (stdio_names_host_path(link, why, sizeof why)) return ESCAPED("stdio names a host path: %s", why);
  }
  DIR *d = opendir("/proc/1/fd");
  if (!d) return BLOCKED("fds 0-2 name no host path; /proc/1/fd: %s", E(errno));
  struct dirent *e;
  int listed = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    listed++;
    snprintf(link, sizeof link, "/proc/1/fd/%.32s", e->d_name);
    if (stdio_names_host_path(link, why, sizeof why)) {
      closedir(d);
      return ESCAPED("init's fd names a host path: %s", why);
    }
  }
  closedir(d);
  return BLOCKED("fds 0-2 and init's %d fds name no host path", listed);
}

// ---- issue 19: the workspace's volume key (src/storage, docs/storage.md) ------------------------------
// With storageBackend ext4-fscrypt, /workspace is an fscrypt directory whose key the daemon added as host
// root. The workload must not be able to take that key out of the kernel (locking the node out of its
// backups, or hiding its files from them): removing it for all users needs CAP_SYS_ADMIN in the initial
// user namespace, and the workload never held a claim of its own. On a node without volumes there is
// nothing to probe.

static result probe_volume_key_removal(void) {
  int fd = open("/workspace", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return UNKNOWN("open /workspace: %s", E(errno));
  struct fscrypt_get_policy_ex_arg pol;
  memset(&pol, 0, sizeof pol);
  pol.policy_size = sizeof pol.policy;
  if (ioctl(fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, &pol) != 0) {
    int err = errno;
    close(fd);
    if (err == ENODATA || err == ENOTTY || err == EOPNOTSUPP) return BLOCKED("/workspace is not on an encrypted volume here (%s)", E(err));
    return BLOCKED("FS_IOC_GET_ENCRYPTION_POLICY_EX: %s", E(err));
  }
  if (pol.policy.version != FSCRYPT_POLICY_V2) {
    close(fd);
    return UNKNOWN("/workspace has a v%d policy", pol.policy.version);
  }
  struct fscrypt_remove_key_arg rm;
  memset(&rm, 0, sizeof rm);
  rm.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
  memcpy(rm.key_spec.u.identifier, pol.policy.v2.master_key_identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
  int all = ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, &rm) == 0 ? 0 : errno;
  int own = ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY, &rm) == 0 ? 0 : errno;
  struct fscrypt_get_key_status_arg st;
  memset(&st, 0, sizeof st);
  st.key_spec = rm.key_spec;
  int rc = ioctl(fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, &st);
  int status_err = errno;
  close(fd);
  if (rc != 0) return UNKNOWN("FS_IOC_GET_ENCRYPTION_KEY_STATUS: %s", E(status_err));
  if (st.status != FSCRYPT_KEY_STATUS_PRESENT) return ESCAPED("the volume's key is gone from the kernel (status %u)", st.status);
  int probe = open("/workspace/.volume-key-probe", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (probe < 0) return ESCAPED("the key is listed but /workspace no longer takes a file: %s", E(errno));
  close(probe);
  unlink("/workspace/.volume-key-probe");
  return BLOCKED("remove for all users: %s, for itself: %s; the key stays present", all ? E(all) : "0 (?)", own ? E(own) : "0");
}

// ---- issue 18 (exec and terminals): `battery --facts` prints what a process sees of its own sandbox ----
// The exec test (test/exec/battery-exec.test.ts) runs it as the workload and through ExecWorkspace in the
// same workspace: every FACT line must be the same (nsenter from the host showed CapEff 000001ffffffffff,
// Seccomp 0 and the host's cgroup).

static void fact_line(const char *name, const char *value) {
  printf("FACT %s %s\n", name, value);
}

// A file on one line ('|' for newlines), or its errno.
static void fact_file(const char *name, const char *path) {
  static char buf[16384];
  ssize_t n = read_file(path, buf, sizeof buf);
  if (n < 0) {
    fact_line(name, E(errno));
    return;
  }
  for (ssize_t i = 0; i < n; i++)
    if (buf[i] == '\n') buf[i] = '|';
  fact_line(name, buf);
}

// mountinfo is long: its FNV-1a hash and line count say whether two views are the same.
static void fact_mountinfo(void) {
  static char buf[262144];
  ssize_t n = read_file("/proc/self/mountinfo", buf, sizeof buf);
  if (n < 0) return fact_line("mountinfo", E(errno));
  uint64_t h = 1469598103934665603ULL;
  int lines = 0;
  for (ssize_t i = 0; i < n; i++) {
    h = (h ^ (unsigned char)buf[i]) * 1099511628211ULL;
    lines += buf[i] == '\n';
  }
  char v[64];
  snprintf(v, sizeof v, "%d lines fnv1a %016llx", lines, (unsigned long long)h);
  fact_line("mountinfo", v);
}

static int print_facts(void) {
  static const char *const fields[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                                       "Seccomp", "Seccomp_filters", "Uid", "Gid", "Groups"};
  char v[256];
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    if (!status_field(fields[i], v, sizeof v)) snprintf(v, sizeof v, "absent");
    fact_line(fields[i], v);
  }
  static const char *const types[] = {"cgroup", "ipc", "mnt", "net", "pid", "user", "uts"};
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    char link[64], name[32];
    snprintf(link, sizeof link, "/proc/self/ns/%s", types[i]);
    snprintf(name, sizeof name, "ns_%s", types[i]);
    ssize_t n = readlink(link, v, sizeof v - 1);
    v[n > 0 ? n : 0] = '\0';
    fact_line(name, n > 0 ? v : E(errno));
  }
  struct stat st;
  if (stat("/", &st) == 0) snprintf(v, sizeof v, "%lu:%lu", (unsigned long)st.st_dev, (unsigned long)st.st_ino);
  else snprintf(v, sizeof v, "%s", E(errno));
  fact_line("root", v);
  fact_file("cgroup", "/proc/self/cgroup");
  fact_file("uid_map", "/proc/self/uid_map");
  fact_file("gid_map", "/proc/self/gid_map");
  fact_file("limits", "/proc/self/limits");
  fact_file("oom_score_adj", "/proc/self/oom_score_adj");
  fact_file("hostname", "/proc/sys/kernel/hostname");
  fact_mountinfo();
  return 0;
}

// ---- the runner --------------------------------------------------------------------------------------

typedef struct {
  const char *name;
  result (*run)(void);
} probe;

static const probe PROBES[] = {
    // identity and privileges
    {"uid_map_no_host_root", probe_uid_map},
    {"gid_map_no_host_root", probe_gid_map},
    {"rewrite_uid_map", probe_rewrite_uid_map},
    {"chown_to_unmapped_uid", probe_chown_to_unmapped},
    {"setuid_to_unmapped_uid", probe_setuid_unmapped},
    {"caps_bounding_minimal", probe_caps_bounding},
    {"caps_inheritable_ambient_empty", probe_caps_inheritable_ambient},
    {"regain_cap_ambient", probe_regain_cap_ambient},
    {"regain_cap_capset", probe_regain_cap_capset},
    {"no_new_privs", probe_no_new_privs},
    {"seccomp_filter_active", probe_seccomp_active},
    // namespaces
    {"ns_mnt_private", probe_ns_mnt},
    {"ns_pid_private", probe_ns_pid},
    {"ns_net_private", probe_ns_net},
    {"ns_ipc_private", probe_ns_ipc},
    {"ns_uts_private", probe_ns_uts},
    {"ns_user_private", probe_ns_user},
    {"ns_cgroup_private", probe_ns_cgroup},
    {"unshare_user_ns", probe_unshare_user},
    {"clone_new_user_ns", probe_clone_newuser},
    {"clone3_new_user_ns", probe_clone3_newuser},
    {"unshare_other_ns", probe_unshare_other_ns},
    {"setns_anything_visible", probe_setns_anything},
    // host files, processes, descriptors
    {"host_file_by_path", probe_host_file_by_path},
    {"host_file_via_proc1_root", probe_host_file_via_proc1_root},
    {"proc_pid_root_host_or_neighbour", probe_proc_roots},
    {"host_dev_shm", probe_host_dev_shm},
    {"host_processes_visible", probe_host_processes},
    {"host_pid_reachable", probe_signal_host_pid},
    {"leaked_fds_self", probe_leaked_fds_self},
    {"leaked_fds_init", probe_leaked_fds_init},
    {"cwd_outside_root", probe_cwd_inside_root},
    // the init binary
    {"init_open_write", probe_init_open_write},
    {"init_via_proc_exe_cve_2019_5736", probe_init_via_proc_exe},
    {"proc_self_exe_write", probe_proc_self_exe_write},
    {"init_truncate", probe_init_truncate},
    {"init_rename_over", probe_init_rename_over},
    {"init_unlink", probe_init_unlink},
    {"init_hardlink", probe_init_hardlink},
    {"init_chmod_setuid", probe_init_chmod},
    {"init_remount_rw", probe_init_remount_rw},
    {"init_memory_write", probe_init_memory},
    {"pidfd_getfd_init", probe_pidfd_getfd_init},
    {"init_environ_unreadable", probe_init_environ},
    {"ptrace_init", probe_ptrace_init},
    {"process_vm_readv_init", probe_process_vm_readv_init},
    // mounts
    {"mount_proc", probe_mount_proc},
    {"mount_sysfs", probe_mount_sysfs},
    {"mount_cgroup_v1", probe_mount_cgroup_v1},
    {"mount_cgroup2", probe_mount_cgroup2},
    {"mount_block_device", probe_mount_block_device},
    {"mount_tmpfs_over_proc", probe_mount_tmpfs_over_proc},
    {"mount_api_fsopen_open_tree", probe_mount_api},
    {"unmask_proc_kcore", probe_unmask_kcore},
    {"pivot_root", probe_pivot_root},
    // devices
    {"mknod_disk", probe_mknod_disk},
    {"mknod_dev_mem", probe_mknod_dev_mem},
    {"dev_inventory", probe_dev_inventory},
    {"raw_device_access", probe_raw_devices},
    {"tiocsti_injection", probe_tiocsti},
    // /proc and /sys
    {"proc_is_procfs_cve_2019_16884", probe_proc_is_procfs},
    {"dev_null_is_null_cve_2025_31133", probe_dev_null_is_null},
    {"read_proc_kcore", probe_read_kcore},
    {"read_proc_keys", probe_read_keys},
    {"read_proc_timer_list", probe_read_timer_list},
    {"read_proc_sched_debug", probe_read_sched_debug},
    {"read_sys_firmware", probe_read_sys_firmware},
    {"read_proc_misc_masked", probe_read_proc_misc},
    {"kallsyms_addresses", probe_kallsyms},
    {"syslog_read", probe_syslog},
    {"write_sysrq_trigger", probe_write_sysrq},
    {"write_core_pattern", probe_write_core_pattern},
    {"write_drop_caches", probe_write_drop_caches},
    {"write_any_proc_sys", probe_write_proc_sys},
    {"write_sys_kernel", probe_write_sys_kernel},
    {"cgroup_release_agent_cve_2022_0492", probe_release_agent},
    {"readonly_paths", probe_readonly_paths},
    // privileged syscalls
    {"init_module", probe_init_module},
    {"finit_module", probe_finit_module},
    {"delete_module", probe_delete_module},
    {"kexec_load", probe_kexec_load},
    {"kexec_file_load", probe_kexec_file_load},
    {"reboot_power_off", probe_reboot},
    {"swapon_swapoff", probe_swapon},
    {"acct", probe_acct},
    {"iopl_ioperm", probe_iopl},
    {"settimeofday", probe_settimeofday},
    {"clock_settime", probe_clock_settime},
    {"adjtimex_write", probe_adjtimex_write},
    {"sethostname", probe_sethostname},
    {"setdomainname", probe_setdomainname},
    {"open_by_handle_at", probe_open_by_handle_at},
    {"keyctl", probe_keyctl},
    {"add_key_request_key", probe_add_key},
    {"bpf", probe_bpf},
    {"perf_event_open", probe_perf_event_open},
    {"userfaultfd", probe_userfaultfd},
    {"io_uring", probe_io_uring},
    {"personality_flags", probe_personality},
    {"setrlimit_above_hard", probe_setrlimit_above_hard},
    {"oom_score_adj_unkillable", probe_oom_score_adj},
    {"realtime_scheduling", probe_realtime_scheduling},
    {"core_pattern_host_helper", probe_core_pattern_helper},
    {"int80_compat_syscall", probe_int80_unshare},
    {"x32_syscall", probe_x32_unshare},
    // network
    {"vsock_socket", probe_vsock},
    {"raw_packet_socket", probe_raw_socket},
    {"net_admin_mtu_route", probe_net_admin},
    {"host_loopback_tcp", probe_host_loopback_tcp},
    {"host_abstract_unix_socket", probe_host_abstract_socket},
    {"daemon_socket", probe_daemon_socket},
    // December 2026 review, items 3 and 7: argument rules on the bits the kernel reads, socket families, AIO
    {"socket_family_high_bits", probe_socket_family_high_bits},
    {"socket_families_allowlist", probe_socket_families},
    {"netlink_protocols_allowlist", probe_netlink_protocols},
    {"socketpair_families", probe_socketpair_families},
    {"aio_setup_host_capacity", probe_aio_setup},
    // issue 13 (December 2026 review): host terminals, node identity, shared device inodes, ptys
    {"own_session_no_ctty", probe_own_session},
    {"dev_tty_no_terminal", probe_dev_tty},
    {"tiocsti_any_terminal", probe_tiocsti_any_terminal},
    {"foreground_any_terminal", probe_foreground_any_terminal},
    {"proc_cmdline_masked", probe_proc_cmdline},
    {"proc_config_gz_masked", probe_proc_config_gz},
    {"proc_bootconfig_masked", probe_proc_bootconfig},
    {"sys_dmi_masked", probe_sys_dmi},
    {"boot_id_own", probe_boot_id},
    {"dev_nodes_own_inodes", probe_dev_nodes_own_inodes},
    {"dev_inotify_no_outside_events", probe_dev_inotify_quiet},
    {"pty_limit", probe_pty_limit},
    // December 2026 review, item 8: host paths behind stdio
    {"stdio_host_paths", probe_stdio_host_paths},
    // issue 19: the workspace's volume key stays in the kernel whatever the workload does
    {"volume_key_removal", probe_volume_key_removal},
};

// Each probe runs in its own child: side effects stay there, and a probe the filter kills (SIGSYS) is
// reported as blocked instead of ending the battery.
static result run_isolated(const probe *p) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return UNKNOWN("pipe: %s", E(errno));
  pid_t pid = fork();
  if (pid < 0) return UNKNOWN("fork: %s", E(errno));
  if (pid == 0) {
    close(fds[0]);
    alarm(20);
    result r = p->run();
    (void)!write(fds[1], &r, sizeof r);
    _exit(0);
  }
  close(fds[1]);
  result r;
  ssize_t n;
  do n = read(fds[0], &r, sizeof r);
  while (n < 0 && errno == EINTR);
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (n == (ssize_t)sizeof r) return r;
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) return BLOCKED("killed by SIGSYS (seccomp)");
  if (WIFSIGNALED(status)) return UNKNOWN("probe died: %s", strsignal(WTERMSIG(status)));
  return UNKNOWN("probe exited %d without a result", WEXITSTATUS(status));
}

static FILE *report_copy;

static void emit(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  if (report_copy) {
    va_start(ap, fmt);
    vfprintf(report_copy, fmt, ap);
    va_end(ap);
    fflush(report_copy);
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "--facts")) return print_facts();  // issue 18: see print_facts
  snapshot_fds();  // before the battery opens anything of its own
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (env("TETRIX_BATTERY_REPORT")) report_copy = fopen(env("TETRIX_BATTERY_REPORT"), "we");
  int total = 0, escapes = 0, unknown = 0;
  for (size_t i = 0; i < sizeof PROBES / sizeof PROBES[0]; i++) {
    if (argc > 1) {  // optional: run only the probes named on the command line
      bool wanted = false;
      for (int a = 1; a < argc; a++) wanted |= !strcmp(argv[a], PROBES[i].name);
      if (!wanted) continue;
    }
    result r = run_isolated(&PROBES[i]);
    total++;
    escapes += r.outcome == ESCAPED;
    unknown += r.outcome == UNKNOWN;
    emit("PROBE %s %s %s\n", PROBES[i].name, OUTCOME[r.outcome], r.detail);
  }
  emit("battery: %d probes, %d escapes, %d unknown\n", total, escapes, unknown);
  return escapes || unknown ? 1 : 0;
}
