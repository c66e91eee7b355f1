// Shared plumbing of the addon: argument helpers and the one way a native failure becomes a JS error.
#ifndef TETRIX_H
#define TETRIX_H

#define NAPI_VERSION 8
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>

// A tar block (POSIX.1-2001 ustar/pax): the one definition for archive.c, extract.c and, through
// constants.TAR_BLOCK, the TypeScript side.
#define TAR_BLOCK 512

// Per-env state: the JS NativeError class handed to init().
typedef struct {
  napi_ref error_class;
} tx_state;

// "EINVAL" for 22; "E22" for errnos glibc cannot name.
const char *tx_errno_name(int err);

// Builds new NativeError(step, errno, code) (falls back to a plain Error if the class is missing).
napi_value tx_native_error(napi_env env, const char *step, int err);
// Throws it; returns NULL so callers can `return tx_throw(...)`.
napi_value tx_throw(napi_env env, const char *step, int err);
// The same, naming the path the call was about in the error's own `path` field (NULL: none).
napi_value tx_native_error_at(napi_env env, const char *step, const char *path, int err);
napi_value tx_throw_at(napi_env env, const char *step, const char *path, int err);
// Throws a TypeError for a bad argument; returns NULL.
napi_value tx_type_error(napi_env env, const char *what);

// Argument helpers: return false after throwing a TypeError.
bool tx_get_int32(napi_env env, napi_value v, const char *what, int32_t *out);
bool tx_get_uint32(napi_env env, napi_value v, const char *what, uint32_t *out);
// malloc'd NUL-terminated copy; rejects embedded NUL bytes.
bool tx_get_string(napi_env env, napi_value v, const char *what, char **out);
// The pointer behind an external made by this addon; NULL (a TypeError thrown) when it is not one.
void *tx_get_external(napi_env env, napi_value v, const char *what);
// Named property of an object.
bool tx_get_prop(napi_env env, napi_value obj, const char *name, napi_value *out);

napi_value tx_undefined(napi_env env);

// Queues execute/complete as async work named `name`; returns the promise that complete settles through
// *deferred (*work is what complete deletes).
napi_value tx_queue_work(napi_env env, const char *name, napi_async_execute_callback execute,
                         napi_async_complete_callback complete, void *data, napi_deferred *deferred,
                         napi_async_work *work);
// A call's first argument in *out when it has `type`; otherwise a TypeError `what`, and false.
bool tx_arg_of_type(napi_env env, napi_callback_info info, napi_valuetype type, const char *what, napi_value *out);

// Runs work(data) on a libuv worker and returns a promise for it: undefined, or a NativeError named by the
// step work sets (or `name`) with the errno it returns. free_data(data) runs afterwards either way, also
// when the promise cannot be made.
typedef int (*tx_work_fn)(void *data, const char **step);
typedef void (*tx_free_fn)(void *data);
napi_value tx_run_async(napi_env env, const char *name, tx_work_fn work, void *data, tx_free_fn free_data);
// The same, with a failure naming path (which lives in data, so until free_data).
napi_value tx_run_async_at(napi_env env, const char *name, const char *path, tx_work_fn work, void *data,
                          tx_free_fn free_data);

// Each concern registers its functions on the addon object.
void tx_register_mount(napi_env env, napi_value addon, napi_value constants);
void tx_register_notify(napi_env env, napi_value addon);
void tx_register_channel(napi_env env, napi_value addon);
void tx_register_exit(napi_env env, napi_value addon);
void tx_register_spawn(napi_env env, napi_value addon, napi_value constants);
void tx_register_net(napi_env env, napi_value addon);
void tx_register_seccomp(napi_env env, napi_value addon);
void tx_register_idmap(napi_env env, napi_value addon);
void tx_register_fsops(napi_env env, napi_value addon);
void tx_register_archive(napi_env env, napi_value addon, napi_value constants);
void tx_register_extract(napi_env env, napi_value addon);
void tx_register_overlay(napi_env env, napi_value addon);
void tx_register_output(napi_env env, napi_value addon, napi_value constants);
void tx_register_loop(napi_env env, napi_value addon);
void tx_register_fscrypt(napi_env env, napi_value addon);
void tx_register_chunker(napi_env env, napi_value addon);
void tx_register_tree_pack(napi_env env, napi_value addon, napi_value constants);
void tx_register_aead(napi_env env, napi_value addon);
void tx_register_exec(napi_env env, napi_value addon, napi_value constants);
void tx_register_netns_listen(napi_env env, napi_value addon);

void tx_set_function(napi_env env, napi_value obj, const char *name, napi_callback cb);
void tx_set_constant(napi_env env, napi_value obj, const char *name, int64_t value);

#endif
