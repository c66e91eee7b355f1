// The N-API half of spawn (spawn.c is the rest): SpawnOptions read and checked on the JS thread into a
// spawn_job (spawn.h), queued as async work, and the promise settled with its result or a NativeError.
// The same for releaseWorkload(held).
#define _GNU_SOURCE
#include "spawn.h"
#include "spawn-protocol.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void spawn_execute(napi_env env, void *data) {
  (void)env;
  tx_spawn_run(data);
}

static void release_execute(napi_env env, void *data) {
  (void)env;
  tx_spawn_release(data);
}

static void set_int32(napi_env env, napi_value obj, const char *name, int32_t value) {
  napi_value v;
  napi_create_int32(env, value, &v);
  napi_set_named_property(env, obj, name, v);
}

static napi_value held_object(napi_env env, const spawn_job *job) {
  napi_value held;
  napi_create_object(env, &held);
  set_int32(env, held, "gateFd", job->gate_fd);
  set_int32(env, held, "reportFd", job->report_fd);
  return held;
}

static void spawn_complete(napi_env env, napi_status status, void *data) {
  spawn_job *job = data;
  if (status != napi_ok && !job->fail_step) tx_spawn_fail(job, "spawn: async work", ECANCELED);
  if (job->fail_step) {
    tx_spawn_drop(job);
    napi_reject_deferred(env, job->deferred, tx_native_error(env, job->fail_step, job->fail_errno));
  } else {
    napi_value result, v;
    napi_create_object(env, &result);
    set_int32(env, result, "pid", job->pid);
    set_int32(env, result, "pidfd", job->pidfd);
    napi_create_string_utf8(env, job->sys_bound ? "bind" : "sysfs", NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, result, "sysfs", v);
    if (job->hold) napi_set_named_property(env, result, "held", held_object(env, job));
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_async_work(env, job->work);
  tx_spawn_job_free(job);
}

// ===================================================================================================
// Reading SpawnOptions on the JS thread.

static bool get_string_prop(napi_env env, napi_value obj, const char *name, char **out) {
  napi_value v;
  char what[96];
  snprintf(what, sizeof what, "spawn: opts.%s must be a string", name);
  return tx_get_prop(env, obj, name, &v) && tx_get_string(env, v, what, out);
}

static bool get_int_prop(napi_env env, napi_value obj, const char *name, int32_t *out) {
  napi_value v;
  char what[96];
  snprintf(what, sizeof what, "spawn: opts.%s must be an integer", name);
  return tx_get_prop(env, obj, name, &v) && tx_get_int32(env, v, what, out);
}

static bool get_uint_prop(napi_env env, napi_value obj, const char *name, uint32_t *out) {
  napi_value v;
  char what[96];
  snprintf(what, sizeof what, "spawn: opts.%s must be an unsigned 32-bit integer", name);
  return tx_get_prop(env, obj, name, &v) && tx_get_uint32(env, v, what, out);
}

static bool get_array_prop(napi_env env, napi_value obj, const char *name, napi_value *arr, uint32_t *len) {
  bool is_array = false;
  char what[96];
  snprintf(what, sizeof what, "spawn: opts.%s must be an array", name);
  if (!tx_get_prop(env, obj, name, arr) || napi_is_array(env, *arr, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, *arr, len) != napi_ok) {
    tx_type_error(env, what);
    return false;
  }
  return true;
}

// Array of strings -> NULL-terminated vector, with `prefix_count` leading entries from `prefix`.
static bool get_strv_prop(napi_env env, napi_value obj, const char *name, const char *const *prefix,
                          size_t prefix_count, char ***out, uint32_t *count) {
  napi_value arr, item;
  uint32_t len;
  char what[96];
  if (!get_array_prop(env, obj, name, &arr, &len)) return false;
  char **v = calloc(prefix_count + len + 1, sizeof *v);
  if (!v) return tx_throw(env, "malloc", ENOMEM), false;
  *out = v;
  for (size_t i = 0; i < prefix_count; i++) {
    if (!(v[i] = strdup(prefix[i]))) return tx_throw(env, "malloc", ENOMEM), false;
  }
  snprintf(what, sizeof what, "spawn: opts.%s must hold strings", name);
  for (uint32_t i = 0; i < len; i++) {
    if (napi_get_element(env, arr, i, &item) != napi_ok || !tx_get_string(env, item, what, &v[prefix_count + i]))
      return false;
  }
  if (count) *count = len;
  return true;
}

static bool get_mounts(napi_env env, napi_value obj, spawn_job *job) {
  napi_value arr, item, v;
  uint32_t len;
  if (!get_array_prop(env, obj, "mounts", &arr, &len)) return false;
  job->mounts = calloc(len ? len : 1, sizeof *job->mounts);
  if (!job->mounts) return tx_throw(env, "malloc", ENOMEM), false;
  for (uint32_t i = 0; i < len; i++) {
    bind_mount *m = &job->mounts[i];
    job->mount_count = i + 1;
    if (napi_get_element(env, arr, i, &item) != napi_ok || !get_string_prop(env, item, "source", &m->source) ||
        !get_string_prop(env, item, "target", &m->target) || !tx_get_prop(env, item, "readonly", &v))
      return false;
    if (napi_get_value_bool(env, v, &m->readonly) != napi_ok)
      return tx_type_error(env, "spawn: opts.mounts[].readonly must be a boolean"), false;
  }
  return true;
}

static bool is_present(napi_env env, napi_value v) {
  napi_valuetype t;
  return napi_typeof(env, v, &t) == napi_ok && t != napi_undefined && t != napi_null;
}

static bool get_capabilities(napi_env env, napi_value obj, spawn_job *job) {
  napi_value arr, item;
  uint32_t len, cap;
  job->keep_caps = 0;
  // Required, with no default here: the set is policy, kept once in src/sandbox/capabilities.ts.
  if (!get_array_prop(env, obj, "capabilities", &arr, &len)) return false;
  for (uint32_t i = 0; i < len; i++) {
    if (napi_get_element(env, arr, i, &item) != napi_ok ||
        !tx_get_uint32(env, item, "spawn: opts.capabilities must hold capability numbers", &cap))
      return false;
    if (cap > 63) return tx_type_error(env, "spawn: opts.capabilities: capability number out of range"), false;
    job->keep_caps |= 1ULL << cap;
  }
  return true;
}

static bool get_seccomp(napi_env env, napi_value obj, spawn_job *job) {
  napi_value buf;
  bool is_buffer = false;
  void *data;
  size_t len;
  if (!tx_get_prop(env, obj, "seccomp", &buf) || !is_present(env, buf)) return true;
  if (napi_is_buffer(env, buf, &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, buf, &data, &len) != napi_ok)
    return tx_type_error(env, "spawn: opts.seccomp must be a Buffer"), false;
  if (len == 0 || len % sizeof(struct sock_filter) != 0 || len / sizeof(struct sock_filter) > BPF_MAXINSNS)
    return tx_type_error(env, "spawn: opts.seccomp must hold 1..4096 struct sock_filter"), false;
  job->seccomp = malloc(len);
  if (!job->seccomp) return tx_throw(env, "malloc", ENOMEM), false;
  memcpy(job->seccomp, data, len);
  job->seccomp_len = (unsigned short)(len / sizeof(struct sock_filter));
  return true;
}

static bool get_hold(napi_env env, napi_value obj, spawn_job *job) {
  napi_value v;
  job->hold = false;
  if (!tx_get_prop(env, obj, "holdWorkload", &v) || !is_present(env, v)) return true;
  if (napi_get_value_bool(env, v, &job->hold) != napi_ok)
    return tx_type_error(env, "spawn: opts.holdWorkload must be a boolean"), false;
  return true;
}

// opts.workloadUser {uid, gid, groups?}: ids inside the namespace the workload (and each task) runs as,
// with up to 32 supplementary groups; init switches (native/init.c --user).
static bool get_workload_user(napi_env env, napi_value obj, spawn_job *job) {
  static const char what[] = "spawn: opts.workloadUser: uid, gid and up to 32 groups, each below 65536";
  napi_value v, uid_v, gid_v, groups, item;
  uint32_t uid, gid, count = 0, g;
  job->user_arg[0] = 0;
  if (!tx_get_prop(env, obj, "workloadUser", &v) || !is_present(env, v)) return true;
  if (!tx_get_prop(env, v, "uid", &uid_v) || !tx_get_prop(env, v, "gid", &gid_v) ||
      !tx_get_uint32(env, uid_v, what, &uid) || !tx_get_uint32(env, gid_v, what, &gid))
    return false;
  if (uid > 65535 || gid > 65535) return tx_type_error(env, what), false;
  int n = snprintf(job->user_arg, sizeof job->user_arg, "%u:%u", uid, gid);
  if (tx_get_prop(env, v, "groups", &groups) && is_present(env, groups)) {
    if (napi_get_array_length(env, groups, &count) != napi_ok || count > 32) return tx_type_error(env, what), false;
    for (uint32_t i = 0; i < count; i++) {
      if (napi_get_element(env, groups, i, &item) != napi_ok || !tx_get_uint32(env, item, what, &g)) return false;
      if (g > 65535) return tx_type_error(env, what), false;
      n += snprintf(job->user_arg + n, sizeof job->user_arg - (size_t)n, "%s%u", i == 0 ? ":" : ",", g);
    }
  }
  return true;
}

static bool get_tasks_fd(napi_env env, napi_value obj, spawn_job *job) {
  napi_value v;
  job->tasks_fd = -1;
  if (!tx_get_prop(env, obj, "tasksFd", &v) || !is_present(env, v)) return true;
  if (!tx_get_int32(env, v, "spawn: opts.tasksFd must be an fd", &job->tasks_fd)) return false;
  if (job->tasks_fd < 0) return tx_type_error(env, "spawn: opts.tasksFd must not be negative"), false;
  return true;
}

// opts.<name>: absent, or two fds init is to keep (outputReadFds: [stdout, stderr] read ends;
// sessionParkFds: both ends of the session park pair, native/exec.c).
static bool get_fd_pair(napi_env env, napi_value obj, const char *name, int out[2]) {
  char what[96];
  napi_value arr, item;
  uint32_t len;
  int32_t fd;
  snprintf(what, sizeof what, "spawn: opts.%s must be two file descriptors", name);
  out[0] = out[1] = -1;
  if (!tx_get_prop(env, obj, name, &arr) || !is_present(env, arr)) return true;
  if (!get_array_prop(env, obj, name, &arr, &len)) return false;
  if (len != 2) return tx_type_error(env, what), false;
  for (uint32_t i = 0; i < 2; i++) {
    if (napi_get_element(env, arr, i, &item) != napi_ok || !tx_get_int32(env, item, what, &fd)) return false;
    if (fd < 0) return tx_type_error(env, what), false;
    out[i] = fd;
  }
  return true;
}

static bool get_output_read_fds(napi_env env, napi_value obj, spawn_job *job) {
  return get_fd_pair(env, obj, "outputReadFds", job->output_read_fds) &&
         get_fd_pair(env, obj, "sessionParkFds", job->session_park_fds);
}

static bool read_options(napi_env env, napi_value opts, spawn_job *job) {
  uint32_t argc = 0, cgroups = 0;
  int32_t out, err, status;
  if (!get_hold(env, opts, job) || !get_tasks_fd(env, opts, job) || !get_workload_user(env, opts, job)) return false;
  const char *prefix[6];
  size_t prefix_count = 0;
  prefix[prefix_count++] = "init";
  if (job->hold) prefix[prefix_count++] = "--hold";
  if (job->tasks_fd >= 0) prefix[prefix_count++] = "--tasks";
  if (job->user_arg[0]) {
    prefix[prefix_count++] = "--user";
    prefix[prefix_count++] = job->user_arg;
  }
  prefix[prefix_count++] = "--";
  if (!get_string_prop(env, opts, "rootfs", &job->rootfs) || !get_string_prop(env, opts, "initPath", &job->init_path) ||
      !get_strv_prop(env, opts, "argv", prefix, prefix_count, &job->argv, &argc) ||
      !get_strv_prop(env, opts, "env", NULL, 0, &job->envp, NULL) || !get_string_prop(env, opts, "cwd", &job->cwd) ||
      !get_string_prop(env, opts, "hostname", &job->hostname) ||
      !get_uint_prop(env, opts, "uidBase", &job->uid_base) || !get_uint_prop(env, opts, "gidBase", &job->gid_base) ||
      !get_uint_prop(env, opts, "idCount", &job->id_count) ||
      !get_strv_prop(env, opts, "cgroupTasks", NULL, 0, &job->cgroup_tasks, &cgroups) ||
      !get_string_prop(env, opts, "cgroupDir", &job->cgroup_dir) ||
      !get_int_prop(env, opts, "stdoutFd", &out) || !get_int_prop(env, opts, "stderrFd", &err) ||
      !get_int_prop(env, opts, "statusFd", &status) || !get_uint_prop(env, opts, "ptyLimit", &job->pty_limit) ||
      !get_mounts(env, opts, job) ||
      !get_capabilities(env, opts, job) || !get_seccomp(env, opts, job) || !get_output_read_fds(env, opts, job))
    return false;
  job->cgroup_count = cgroups;
  job->stdout_fd = out;
  job->stderr_fd = err;
  job->status_fd = status;

  if (argc == 0 && job->tasks_fd < 0) return tx_type_error(env, "spawn: opts.argv must not be empty"), false;
  if (argc > 0 && job->tasks_fd >= 0) return tx_type_error(env, "spawn: opts.argv must be empty with opts.tasksFd"), false;
  if (job->rootfs[0] != '/') return tx_type_error(env, "spawn: opts.rootfs must be absolute"), false;
  if (job->cwd[0] != '/') return tx_type_error(env, "spawn: opts.cwd must be absolute"), false;
  if (strlen(job->hostname) > 64) return tx_type_error(env, "spawn: opts.hostname is longer than 64"), false;
  // Container root must never be host root (MACHINE-FACTS: sysctl writes check the global euid).
  if (job->uid_base == 0 || job->gid_base == 0)
    return tx_type_error(env, "spawn: opts.uidBase and opts.gidBase must not be 0"), false;
  if (job->id_count == 0 || (uint64_t)job->uid_base + job->id_count > UINT32_MAX ||
      (uint64_t)job->gid_base + job->id_count > UINT32_MAX)
    return tx_type_error(env, "spawn: opts.idCount out of range"), false;
  if (out < 0 || err < 0 || status < 0) return tx_type_error(env, "spawn: fds must not be negative"), false;
  // devpts refuses a max= above NR_UNIX98_PTY_MAX (1 << MINORBITS).
  if (job->pty_limit == 0 || job->pty_limit > (1u << 20))
    return tx_type_error(env, "spawn: opts.ptyLimit must be 1..1048576"), false;
  // gid=5 is "tty" in most images; only name it when it is mapped. Built here: the child has no snprintf.
  snprintf(job->devpts_data, sizeof job->devpts_data, "newinstance,ptmxmode=0666,mode=0620%s,max=%u",
           job->id_count > 5 ? ",gid=5" : "", job->pty_limit);
  return true;
}

static napi_value js_spawn(napi_env env, napi_callback_info info) {
  napi_value opts;
  if (!tx_arg_of_type(env, info, napi_object, "spawn(opts): opts must be an object", &opts)) return NULL;
  spawn_job *job = tx_spawn_job_new();
  if (!job) return tx_throw(env, "malloc", ENOMEM);
  if (!read_options(env, opts, job)) {
    tx_spawn_job_free(job);
    return NULL;
  }
  return tx_queue_work(env, "tetrix.spawn", spawn_execute, spawn_complete, job, &job->deferred, &job->work);
}

// ===================================================================================================
// releaseWorkload(held): the second half of a held spawn, on a worker thread. Opens the gate, then reads
// the report pipe as spawn would have: EOF = the workload exec'd, a record = what failed. Both fds are
// closed either way.

static void release_complete(napi_env env, napi_status status, void *data) {
  spawn_job *job = data;
  if (status != napi_ok && !job->fail_step) {
    tx_spawn_fail(job, "releaseWorkload: async work", ECANCELED);
    tx_spawn_drop(job);  // never ran: the fds are still ours to close
  }
  if (job->fail_step) napi_reject_deferred(env, job->deferred, tx_native_error(env, job->fail_step, job->fail_errno));
  else napi_resolve_deferred(env, job->deferred, tx_undefined(env));
  napi_delete_async_work(env, job->work);
  tx_spawn_job_free(job);
}

static bool get_held_fd(napi_env env, napi_value held, const char *name, int *out) {
  napi_value v;
  char what[96];
  int32_t fd;
  snprintf(what, sizeof what, "releaseWorkload: held.%s must be a file descriptor", name);
  if (!tx_get_prop(env, held, name, &v) || !tx_get_int32(env, v, what, &fd)) return false;
  if (fd < 0) return tx_type_error(env, what), false;
  *out = fd;
  return true;
}

static napi_value js_release_workload(napi_env env, napi_callback_info info) {
  napi_value held;
  int gate_fd, report_fd;
  if (!tx_arg_of_type(env, info, napi_object, "releaseWorkload(held): held must be an object", &held)) return NULL;
  if (!get_held_fd(env, held, "gateFd", &gate_fd) || !get_held_fd(env, held, "reportFd", &report_fd)) return NULL;
  spawn_job *job = tx_spawn_job_new();
  if (!job) return tx_throw(env, "malloc", ENOMEM);
  job->hold = true;
  job->gate_fd = gate_fd;
  job->report_fd = report_fd;
  return tx_queue_work(env, "tetrix.releaseWorkload", release_execute, release_complete, job, &job->deferred,
                       &job->work);
}

void tx_register_spawn(napi_env env, napi_value addon, napi_value constants) {
  tx_set_function(env, addon, "spawn", js_spawn);
  tx_set_function(env, addon, "releaseWorkload", js_release_workload);
  tx_set_constant(env, constants, "INIT_EXIT_ABANDONED", TX_INIT_EXIT_ABANDONED);
}
