#define _GNU_SOURCE
#include "tetrix.h"
#include <errno.h>

static napi_value js_spawn(napi_env env, napi_callback_info info) {
  (void)info;
  napi_deferred deferred;
  napi_value promise;
  napi_create_promise(env, &deferred, &promise);
  napi_reject_deferred(env, deferred, tx_native_error(env, "spawn: not implemented yet", ENOSYS));
  return promise;
}

void tx_register_spawn(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "spawn", js_spawn);
}
