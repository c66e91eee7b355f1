// mount(2), umount2(2) and mkfifo(3) for the daemon's own filesystem work (rootfs overlays, binds, the
// workspaces' output FIFOs), plus the constants the JS side passes back in. The daemon's start and
// teardown use the *Async forms and makeDirs, on libuv workers; the synchronous ones serve spawn's tests.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/stat.h>

// "" means NULL, so callers can say mount('', '/', '', MS_REC | MS_PRIVATE, '').
static const char *or_null(const char *s) { return s[0] ? s : NULL; }

static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  char *source = NULL, *target = NULL, *fstype = NULL, *data = NULL;
  uint32_t flags;
  napi_value result = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) return tx_type_error(env, "mount(source, target, fstype, flags, data)");
  if (tx_get_string(env, argv[0], "mount: source must be a string", &source) &&
      tx_get_string(env, argv[1], "mount: target must be a string", &target) &&
      tx_get_string(env, argv[2], "mount: fstype must be a string", &fstype) &&
      tx_get_uint32(env, argv[3], "mount: flags must be an unsigned 32-bit number", &flags) &&
      tx_get_string(env, argv[4], "mount: data must be a string", &data)) {
    if (mount(or_null(source), target, or_null(fstype), flags, or_null(data)) != 0) {
      tx_throw_at(env, "mount", target, errno);
    } else {
      result = tx_undefined(env);
    }
  }
  free(source);
  free(target);
  free(fstype);
  free(data);
  return result;
}

static napi_value js_umount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char *target = NULL;
  uint32_t flags;
  napi_value result = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "umount(target, flags)");
  if (tx_get_string(env, argv[0], "umount: target must be a string", &target) &&
      tx_get_uint32(env, argv[1], "umount: flags must be an unsigned 32-bit number", &flags)) {
    if (umount2(target, (int)flags) != 0) {
      tx_throw_at(env, "umount", target, errno);
    } else {
      result = tx_undefined(env);
    }
  }
  free(target);
  return result;
}

// mount(2) on a libuv worker: an overlay mount is ~0.5 ms at rest but several under a burst of starts,
// and the event loop must keep answering the API meanwhile (bench/density).
typedef struct {
  char *source, *target, *fstype, *data;
  uint32_t flags;
} mount_args;

static void free_mount_args(void *p) {
  mount_args *a = p;
  free(a->source);
  free(a->target);
  free(a->fstype);
  free(a->data);
  free(a);
}

static int mount_work(void *p, const char **step) {
  mount_args *a = p;
  *step = "mount";
  return mount(or_null(a->source), a->target, or_null(a->fstype), a->flags, or_null(a->data)) != 0 ? errno : 0;
}

static napi_value js_mount_async(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) return tx_type_error(env, "mountAsync(source, target, fstype, flags, data)");
  mount_args *a = calloc(1, sizeof *a);
  if (!a) return tx_throw(env, "mountAsync", ENOMEM);
  if (!tx_get_string(env, argv[0], "mountAsync: source must be a string", &a->source) ||
      !tx_get_string(env, argv[1], "mountAsync: target must be a string", &a->target) ||
      !tx_get_string(env, argv[2], "mountAsync: fstype must be a string", &a->fstype) ||
      !tx_get_uint32(env, argv[3], "mountAsync: flags must be an unsigned 32-bit number", &a->flags) ||
      !tx_get_string(env, argv[4], "mountAsync: data must be a string", &a->data)) {
    free_mount_args(a);
    return NULL;
  }
  return tx_run_async_at(env, "mount", a->target, mount_work, a, free_mount_args);
}

// umount2(2) on a libuv worker: a detach waits in the kernel for an RCU grace period (~2 ms), which must
// not stall the event loop (the API answers while workspaces stop).
typedef struct {
  char *target;
  uint32_t flags;
} umount_args;

static void free_umount_args(void *p) {
  umount_args *a = p;
  free(a->target);
  free(a);
}

static int umount_work(void *p, const char **step) {
  umount_args *a = p;
  *step = "umount";
  return umount2(a->target, (int)a->flags) != 0 ? errno : 0;
}

static napi_value js_umount_async(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "umountAsync(target, flags)");
  umount_args *a = calloc(1, sizeof *a);
  if (!a) return tx_throw(env, "umountAsync", ENOMEM);
  if (!tx_get_string(env, argv[0], "umountAsync: target must be a string", &a->target) ||
      !tx_get_uint32(env, argv[1], "umountAsync: flags must be an unsigned 32-bit number", &a->flags)) {
    free_umount_args(a);
    return NULL;
  }
  return tx_run_async_at(env, "umount", a->target, umount_work, a, free_umount_args);
}

// makeDirs([{path, mode, uid, gid}]): mkdir (an existing one is fine), chown and chmod each in order, on a
// libuv worker. A workspace's layout is five directories: fifteen calls that under a burst of starts wait
// for the file system's journal, which must not stall the event loop, and that as fifteen thread-pool
// round trips cost more than the calls.
typedef struct {
  char *path;
  uint32_t mode, uid, gid;
} dir_spec;

typedef struct {
  dir_spec *dirs;
  uint32_t count;
  char step[PATH_MAX + 16];
} dirs_args;

static void free_dirs_args(void *p) {
  dirs_args *a = p;
  for (uint32_t i = 0; a->dirs && i < a->count; i++) free(a->dirs[i].path);
  free(a->dirs);
  free(a);
}

static int make_dirs_work(void *p, const char **step) {
  dirs_args *a = p;
  for (uint32_t i = 0; i < a->count; i++) {
    const dir_spec *d = &a->dirs[i];
    const char *verb = NULL;
    if (mkdir(d->path, (mode_t)d->mode) != 0 && errno != EEXIST) verb = "mkdir";
    else if (chown(d->path, d->uid, d->gid) != 0) verb = "chown";
    else if (chmod(d->path, (mode_t)d->mode) != 0) verb = "chmod";
    if (verb) {
      int err = errno;
      snprintf(a->step, sizeof a->step, "%s %s", verb, d->path);
      *step = a->step;
      return err;
    }
  }
  return 0;
}

static bool get_dir_spec(napi_env env, napi_value item, dir_spec *d) {
  napi_value v;
  return tx_get_prop(env, item, "path", &v) && tx_get_string(env, v, "makeDirs: path must be a string", &d->path) &&
         tx_get_prop(env, item, "mode", &v) && tx_get_uint32(env, v, "makeDirs: mode must be a number", &d->mode) &&
         tx_get_prop(env, item, "uid", &v) && tx_get_uint32(env, v, "makeDirs: uid must be a number", &d->uid) &&
         tx_get_prop(env, item, "gid", &v) && tx_get_uint32(env, v, "makeDirs: gid must be a number", &d->gid);
}

static napi_value js_make_dirs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_array = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array)
    return tx_type_error(env, "makeDirs(dirs): dirs must be an array");
  dirs_args *a = calloc(1, sizeof *a);
  if (!a) return tx_throw(env, "makeDirs", ENOMEM);
  napi_get_array_length(env, argv[0], &a->count);
  a->dirs = calloc(a->count ? a->count : 1, sizeof *a->dirs);
  if (!a->dirs) {
    free(a);
    return tx_throw(env, "makeDirs", ENOMEM);
  }
  for (uint32_t i = 0; i < a->count; i++) {
    napi_value item;
    if (napi_get_element(env, argv[0], i, &item) != napi_ok || !get_dir_spec(env, item, &a->dirs[i])) {
      free_dirs_args(a);
      return NULL;
    }
  }
  return tx_run_async(env, "makeDirs", make_dirs_work, a, free_dirs_args);
}

// Whether path is the root of a mount, from statx (Linux 5.8): one call, where mountinfo would be read
// and parsed whole (about a millisecond per read with a few hundred workspaces on the node). A symlink is
// not followed. ENOTSUP when the kernel does not report the attribute.
static napi_value js_is_mount_point(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result = NULL;
  char *path = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return tx_type_error(env, "isMountPoint(path)");
  if (!tx_get_string(env, argv[0], "isMountPoint: path must be a string", &path)) return NULL;
  struct statx stx;
  if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE, &stx) != 0) {
    tx_throw_at(env, "statx", path, errno);
  } else if (!(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)) {
    tx_throw_at(env, "statx", path, ENOTSUP);
  } else {
    napi_get_boolean(env, (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0, &result);
  }
  free(path);
  return result;
}

// Node has no mkfifo; the workspaces' stdout/stderr are FIFOs so a restarted daemon can reopen them.
static napi_value js_mkfifo(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char *path = NULL;
  uint32_t mode;
  napi_value result = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "mkfifo(path, mode)");
  if (tx_get_string(env, argv[0], "mkfifo: path must be a string", &path) &&
      tx_get_uint32(env, argv[1], "mkfifo: mode must be an unsigned 32-bit number", &mode)) {
    if (mkfifo(path, (mode_t)mode) != 0) {
      tx_throw_at(env, "mkfifo", path, errno);
    } else {
      result = tx_undefined(env);
    }
  }
  free(path);
  return result;
}

#define CONST(name) tx_set_constant(env, constants, #name, name)

void tx_register_mount(napi_env env, napi_value addon, napi_value constants) {
  tx_set_function(env, addon, "mount", js_mount);
  tx_set_function(env, addon, "umount", js_umount);
  tx_set_function(env, addon, "mountAsync", js_mount_async);
  tx_set_function(env, addon, "umountAsync", js_umount_async);
  tx_set_function(env, addon, "makeDirs", js_make_dirs);
  tx_set_function(env, addon, "isMountPoint", js_is_mount_point);
  tx_set_function(env, addon, "mkfifo", js_mkfifo);

  CONST(MS_RDONLY); CONST(MS_NOSUID); CONST(MS_NODEV); CONST(MS_NOEXEC); CONST(MS_SYNCHRONOUS);
  CONST(MS_REMOUNT); CONST(MS_MANDLOCK); CONST(MS_DIRSYNC); CONST(MS_NOATIME); CONST(MS_NODIRATIME);
  CONST(MS_BIND); CONST(MS_MOVE); CONST(MS_REC); CONST(MS_SILENT); CONST(MS_UNBINDABLE);
  CONST(MS_PRIVATE); CONST(MS_SLAVE); CONST(MS_SHARED); CONST(MS_RELATIME); CONST(MS_STRICTATIME);
  CONST(MS_LAZYTIME);
  CONST(MNT_FORCE); CONST(MNT_DETACH); CONST(MNT_EXPIRE); CONST(UMOUNT_NOFOLLOW);

  CONST(SIGHUP); CONST(SIGINT); CONST(SIGQUIT); CONST(SIGILL); CONST(SIGTRAP); CONST(SIGABRT);
  CONST(SIGBUS); CONST(SIGFPE); CONST(SIGKILL); CONST(SIGUSR1); CONST(SIGSEGV); CONST(SIGUSR2);
  CONST(SIGPIPE); CONST(SIGALRM); CONST(SIGTERM); CONST(SIGCHLD); CONST(SIGCONT); CONST(SIGSTOP);
  CONST(SIGTSTP); CONST(SIGTTIN); CONST(SIGTTOU); CONST(SIGURG); CONST(SIGXCPU); CONST(SIGXFSZ);
  CONST(SIGVTALRM); CONST(SIGPROF); CONST(SIGWINCH); CONST(SIGIO); CONST(SIGPWR); CONST(SIGSYS);
}
