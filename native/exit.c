// Process handles without SIGCHLD: pidfds, and an exit watch driven by libuv polling the pidfd.
// We never install a SIGCHLD handler and never waitpid(-1): libuv owns its own children, we reap only
// through waitid(P_PIDFD) on pids we hold a pidfd for.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>
#include <stdio.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static napi_value js_pidfd_open(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int32_t pid;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !tx_get_int32(env, argv[0], "pidfdOpen: pid must be an integer", &pid)) return NULL;
  if (pid <= 0) return tx_throw(env, "pidfd_open", EINVAL);
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);  // always O_CLOEXEC
  if (fd < 0) return tx_throw(env, "pidfd_open", errno);
  napi_create_int32(env, fd, &result);
  return result;
}

static napi_value js_pidfd_send_signal(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t pidfd, sig;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !tx_get_int32(env, argv[0], "pidfdSendSignal: pidfd must be an integer", &pidfd) ||
      !tx_get_int32(env, argv[1], "pidfdSendSignal: signal must be an integer", &sig))
    return NULL;
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) != 0) return tx_throw(env, "pidfd_send_signal", errno);
  return tx_undefined(env);
}

static napi_value js_close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !tx_get_int32(env, argv[0], "closeFd: fd must be an integer", &fd)) return NULL;
  // close(2): even on EINTR the fd is gone on Linux, so never retry.
  if (close(fd) != 0 && errno != EINTR) return tx_throw(env, "close", errno);
  return tx_undefined(env);
}

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context async;
  int pidfd;
} exit_watch;

typedef struct {
  bool reaped;
  int exit_code;  // -1 when signaled or unknown
  int signal;     // 0 when exited or unknown
} exit_status;

static void free_watch(uv_handle_t *handle) {
  exit_watch *w = handle->data;
  if (w->pidfd >= 0) close(w->pidfd);
  napi_delete_reference(w->env, w->callback);
  napi_async_destroy(w->env, w->async);
  free(w);
}

static napi_value status_object(napi_env env, exit_status st) {
  napi_value obj, v;
  napi_create_object(env, &obj);
  if (st.exit_code >= 0) napi_create_int32(env, st.exit_code, &v);
  else napi_get_null(env, &v);
  napi_set_named_property(env, obj, "exitCode", v);
  if (st.signal > 0) {
    char name[32] = "SIG";
    const char *abbrev = sigabbrev_np(st.signal);
    if (abbrev) strncat(name, abbrev, sizeof name - 4);
    else snprintf(name, sizeof name, "SIG%d", st.signal);
    napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &v);
  } else {
    napi_get_null(env, &v);
  }
  napi_set_named_property(env, obj, "signal", v);
  napi_get_boolean(env, st.reaped, &v);
  napi_set_named_property(env, obj, "reaped", v);
  return obj;
}

// Returns false while the process still runs (a spurious wakeup).
static bool collect_exit(int pidfd, exit_status *st) {
  siginfo_t si;
  int r;
  memset(&si, 0, sizeof si);
  do r = waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG);
  while (r != 0 && errno == EINTR);
  *st = (exit_status){.reaped = false, .exit_code = -1, .signal = 0};
  if (r != 0) return true;  // ECHILD: not our child (adopted after a restart); it ended, status unknown here
  if (si.si_pid == 0) return false;
  st->reaped = true;
  if (si.si_code == CLD_EXITED) st->exit_code = si.si_status;
  else st->signal = si.si_status;
  return true;
}

static void on_pidfd_ready(uv_poll_t *handle, int status, int events) {
  (void)events;
  exit_watch *w = handle->data;
  exit_status st;
  if (status == 0 && !collect_exit(w->pidfd, &st)) return;
  if (status != 0) st = (exit_status){.reaped = false, .exit_code = -1, .signal = 0};
  uv_poll_stop(handle);  // takes the fd out of epoll at once, so our dup may go before JS hears of the exit
  close(w->pidfd);
  w->pidfd = -1;

  napi_env env = w->env;
  napi_handle_scope scope;
  napi_value cb, recv, arg, ignored;
  napi_open_handle_scope(env, &scope);
  napi_get_reference_value(env, w->callback, &cb);
  napi_get_global(env, &recv);  // make_callback wants an object receiver
  arg = status_object(env, st);
  // make_callback runs microtasks afterwards and reports a throwing callback as an uncaught exception.
  napi_make_callback(env, w->async, recv, cb, 1, &arg, &ignored);
  napi_close_handle_scope(env, scope);
  uv_close((uv_handle_t *)handle, free_watch);
}

// watchExit(pidfd, cb): cb({exitCode, signal, reaped}) once. We poll a dup of the pidfd, so the caller may
// close theirs at any time, and two watches never share one fd in libuv's epoll set (uv__io_check_fd
// would drop the first). The dup shares the file description: libuv makes it O_NONBLOCK for both.
static napi_value js_watch_exit(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], name;
  int32_t pidfd;
  napi_valuetype t;
  struct uv_loop_s *loop;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !tx_get_int32(env, argv[0], "watchExit: pidfd must be an integer", &pidfd)) return NULL;
  if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function)
    return tx_type_error(env, "watchExit: callback must be a function");
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return tx_throw(env, "watchExit: event loop", EINVAL);

  // Refuse what is not a pidfd now, rather than "exiting" it at once. ECHILD is fine: an adopted process.
  siginfo_t probe;
  if (waitid(P_PIDFD, (id_t)pidfd, &probe, WEXITED | WNOHANG | WNOWAIT) != 0 && errno != ECHILD && errno != EINTR)
    return tx_throw(env, "watchExit", errno);

  exit_watch *w = calloc(1, sizeof *w);
  if (!w) return tx_throw(env, "watchExit", ENOMEM);
  w->env = env;
  w->pidfd = fcntl(pidfd, F_DUPFD_CLOEXEC, 0);
  if (w->pidfd < 0) {
    int err = errno;
    free(w);
    return tx_throw(env, "watchExit: dup", err);
  }
  w->poll.data = w;
  int r = uv_poll_init(loop, &w->poll, w->pidfd);
  if (r != 0) {
    close(w->pidfd);
    free(w);
    return tx_throw(env, "watchExit: uv_poll_init", -r);
  }
  napi_create_reference(env, argv[1], 1, &w->callback);
  napi_create_string_utf8(env, "tetrix.watchExit", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &w->async);
  r = uv_poll_start(&w->poll, UV_READABLE, on_pidfd_ready);
  if (r != 0) {
    uv_close((uv_handle_t *)&w->poll, free_watch);
    return tx_throw(env, "watchExit: uv_poll_start", -r);
  }
  return tx_undefined(env);
}

void tx_register_exit(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "pidfdOpen", js_pidfd_open);
  tx_set_function(env, addon, "pidfdSendSignal", js_pidfd_send_signal);
  tx_set_function(env, addon, "closeFd", js_close_fd);
  tx_set_function(env, addon, "watchExit", js_watch_exit);
}
