// Entry point of the addon: exports init(NativeErrorClass), which returns the addon object. Every native
// failure is thrown as that JS class with .step, .errno, .code ("pivot_root: EINVAL") and, where the call
// was about one, .path.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *tx_errno_name(int err) {
  static __thread char buf[16];
  const char *name = strerrorname_np(err);
  if (name) return name;
  snprintf(buf, sizeof buf, "E%d", err);
  return buf;
}

napi_value tx_undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

napi_value tx_queue_work(napi_env env, const char *name, napi_async_execute_callback execute,
                         napi_async_complete_callback complete, void *data, napi_deferred *deferred,
                         napi_async_work *work) {
  napi_value promise, resource;
  napi_create_promise(env, deferred, &promise);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  napi_create_async_work(env, NULL, resource, execute, complete, data, work);
  napi_queue_async_work(env, *work);
  return promise;
}

bool tx_arg_of_type(napi_env env, napi_callback_info info, napi_valuetype type, const char *what, napi_value *out) {
  size_t argc = 1;
  napi_valuetype t;
  napi_get_cb_info(env, info, &argc, out, NULL, NULL);
  if (argc < 1 || napi_typeof(env, *out, &t) != napi_ok || t != type) return tx_type_error(env, what), false;
  return true;
}

napi_value tx_native_error_at(napi_env env, const char *step, const char *path, int err) {
  tx_state *state = NULL;
  napi_value cls = NULL, argv[4], error;
  napi_get_instance_data(env, (void **)&state);
  napi_create_string_utf8(env, step, NAPI_AUTO_LENGTH, &argv[0]);
  napi_create_int32(env, err, &argv[1]);
  napi_create_string_utf8(env, tx_errno_name(err), NAPI_AUTO_LENGTH, &argv[2]);
  if (path) napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &argv[3]);
  else argv[3] = tx_undefined(env);
  if (state && state->error_class) napi_get_reference_value(env, state->error_class, &cls);
  if (cls && napi_new_instance(env, cls, 4, argv, &error) == napi_ok) return error;
  // No class registered: still say which step, path and errno.
  char msg[PATH_MAX + 512];
  napi_value m;
  snprintf(msg, sizeof msg, "%s%s%s: %s", step, path ? " " : "", path ? path : "", tx_errno_name(err));
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
  napi_create_error(env, NULL, m, &error);
  return error;
}

napi_value tx_native_error(napi_env env, const char *step, int err) {
  return tx_native_error_at(env, step, NULL, err);
}

napi_value tx_throw_at(napi_env env, const char *step, const char *path, int err) {
  napi_throw(env, tx_native_error_at(env, step, path, err));
  return NULL;
}

napi_value tx_throw(napi_env env, const char *step, int err) {
  return tx_throw_at(env, step, NULL, err);
}

typedef struct {
  const char *name, *step, *path;
  tx_work_fn work;
  tx_free_fn free_data;
  void *data;
  int err;
  napi_deferred deferred;
  napi_async_work async;
} tx_async_job;

static void async_execute(napi_env env, void *p) {
  (void)env;
  tx_async_job *job = p;
  job->err = job->work(job->data, &job->step);
}

static void async_complete(napi_env env, napi_status status, void *p) {
  tx_async_job *job = p;
  int err = status == napi_ok ? job->err : ECANCELED;
  if (err) napi_reject_deferred(env, job->deferred, tx_native_error_at(env, job->step ? job->step : job->name, job->path, err));
  else napi_resolve_deferred(env, job->deferred, tx_undefined(env));
  napi_delete_async_work(env, job->async);
  if (job->free_data) job->free_data(job->data);
  free(job);
}

napi_value tx_run_async_at(napi_env env, const char *name, const char *path, tx_work_fn work, void *data,
                          tx_free_fn free_data) {
  napi_value promise, resource;
  tx_async_job *job = calloc(1, sizeof *job);
  if (!job || napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    free(job);
    if (free_data) free_data(data);
    return tx_throw(env, name, ENOMEM);
  }
  *job = (tx_async_job){.name = name, .path = path, .work = work, .free_data = free_data, .data = data, .deferred = job->deferred};
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  napi_create_async_work(env, NULL, resource, async_execute, async_complete, job, &job->async);
  napi_queue_async_work(env, job->async);
  return promise;
}

napi_value tx_run_async(napi_env env, const char *name, tx_work_fn work, void *data, tx_free_fn free_data) {
  return tx_run_async_at(env, name, NULL, work, data, free_data);
}

void *tx_get_external(napi_env env, napi_value v, const char *what) {
  void *data = NULL;
  if (napi_get_value_external(env, v, &data) != napi_ok || !data) {
    tx_type_error(env, what);
    return NULL;
  }
  return data;
}

napi_value tx_type_error(napi_env env, const char *what) {
  napi_throw_type_error(env, NULL, what);
  return NULL;
}

bool tx_get_int32(napi_env env, napi_value v, const char *what, int32_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_int32(env, v, out) != napi_ok) {
    tx_type_error(env, what);
    return false;
  }
  return true;
}

bool tx_get_uint32(napi_env env, napi_value v, const char *what, uint32_t *out) {
  double d;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok ||
      d < 0 || d > 4294967295.0 || d != (double)(uint32_t)d) {
    tx_type_error(env, what);
    return false;
  }
  *out = (uint32_t)d;
  return true;
}

bool tx_get_string(napi_env env, napi_value v, const char *what, char **out) {
  size_t len;
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string ||
      napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    tx_type_error(env, what);
    return false;
  }
  char *s = malloc(len + 1);
  if (!s) {
    tx_throw(env, "malloc", 12 /* ENOMEM */);
    return false;
  }
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  if (strlen(s) != len) {  // an embedded NUL would silently cut a path short
    free(s);
    tx_type_error(env, what);
    return false;
  }
  *out = s;
  return true;
}

bool tx_get_prop(napi_env env, napi_value obj, const char *name, napi_value *out) {
  return napi_get_named_property(env, obj, name, out) == napi_ok;
}

void tx_set_function(napi_env env, napi_value obj, const char *name, napi_callback cb) {
  napi_value fn;
  napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn);
  napi_set_named_property(env, obj, name, fn);
}

void tx_set_constant(napi_env env, napi_value obj, const char *name, int64_t value) {
  napi_value v;
  napi_create_int64(env, value, &v);
  napi_set_named_property(env, obj, name, v);
}

static void free_state(napi_env env, void *data, void *hint) {
  (void)hint;
  tx_state *state = data;
  if (state->error_class) napi_delete_reference(env, state->error_class);
  free(state);
}

// init(NativeErrorClass) -> addon object
static napi_value init_addon(napi_env env, napi_callback_info info) {
  napi_value error_class, addon, constants;
  if (!tx_arg_of_type(env, info, napi_function, "init(NativeErrorClass): a class is required", &error_class)) return NULL;

  tx_state *state = NULL;
  napi_get_instance_data(env, (void **)&state);
  if (!state) {
    state = calloc(1, sizeof *state);
    if (!state) return tx_throw(env, "malloc", 12);
    napi_set_instance_data(env, state, free_state, NULL);
  }
  if (state->error_class) napi_delete_reference(env, state->error_class);
  napi_create_reference(env, error_class, 1, &state->error_class);

  napi_create_object(env, &addon);
  napi_create_object(env, &constants);
  tx_register_mount(env, addon, constants);
  tx_register_notify(env, addon);
  tx_register_channel(env, addon);
  tx_register_exit(env, addon);
  tx_register_spawn(env, addon, constants);
  tx_register_net(env, addon);
  tx_register_seccomp(env, addon);
  tx_register_idmap(env, addon);
  tx_register_fsops(env, addon);
  tx_register_archive(env, addon, constants);
  tx_register_extract(env, addon);
  tx_register_output(env, addon, constants);
  tx_register_overlay(env, addon);
  tx_register_loop(env, addon);
  tx_register_fscrypt(env, addon);
  tx_register_chunker(env, addon);
  tx_register_tree_pack(env, addon, constants);
  tx_register_aead(env, addon);
  tx_register_exec(env, addon, constants);
  tx_register_netns_listen(env, addon);
  napi_set_named_property(env, addon, "constants", constants);
  return addon;
}

NAPI_MODULE_INIT() {
  tx_set_function(env, exports, "init", init_addon);
  return exports;
}
