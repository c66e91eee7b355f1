// The workspaces' stdout and stderr: anonymous pipes (docs/sandbox.md, "Output"). A workload's readlink of
// fd 1 shows "pipe:[N]", never a host path, and the daemon opens nothing by path to read it.
// The read ends outlive a daemon restart, even kill -9: the workspace's init holds a second read end of
// each (spawn opts.outputReadFds, kept at TX_STDOUT_READ_FD and TX_STDERR_READ_FD and never read), so a
// writer never meets a pipe without readers (no SIGPIPE), and the next daemon takes them back from init
// with pidfd_getfd(2). init is not dumpable, so the workload cannot take them the same way.
#define _GNU_SOURCE
#include "tetrix.h"
#include "spawn-protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

static void close_all(const int *fds, int n) {
  int err = errno;
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) close(fds[i]);
  errno = err;
}

static napi_value fd_object(napi_env env, const int fds[3]) {
  static const char *const names[3] = {"readFd", "writeFd", "keepFd"};
  napi_value obj, v;
  napi_create_object(env, &obj);
  for (int i = 0; i < 3; i++) {
    napi_create_int32(env, fds[i], &v);
    napi_set_named_property(env, obj, names[i], v);
  }
  return obj;
}

// outputPipe(capacity) -> {readFd, writeFd, keepFd}, all close-on-exec. keepFd is the second read end,
// for init. The capacity (F_SETPIPE_SZ, pipe(7)) lets the daemon drain in large chunks.
static napi_value js_output_pipe(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t capacity;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !tx_get_uint32(env, argv[0], "outputPipe: capacity must be an unsigned 32-bit integer", &capacity))
    return NULL;
  int fds[3] = {-1, -1, -1};
  if (pipe2(fds, O_CLOEXEC) != 0) return tx_throw(env, "output pipe: pipe2", errno);
  if (capacity > 0 && fcntl(fds[1], F_SETPIPE_SZ, (int)capacity) < 0) {
    close_all(fds, 2);
    return tx_throw(env, "output pipe: F_SETPIPE_SZ", errno);
  }
  fds[2] = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
  if (fds[2] < 0) {
    close_all(fds, 2);
    return tx_throw(env, "output pipe: dup read end", errno);
  }
  return fd_object(env, fds);
}

// takeOutputPipe(pidfd, fd) -> a close-on-exec copy of init's fd, refused unless it is an anonymous pipe:
// whatever sits there, the daemon reads nothing but a pipe.
static napi_value js_take_output_pipe(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t pidfd, target;
  char step[64];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !tx_get_int32(env, argv[0], "takeOutputPipe: pidfd must be an integer", &pidfd) ||
      !tx_get_int32(env, argv[1], "takeOutputPipe: fd must be an integer", &target))
    return NULL;
  if (target < 0) return tx_type_error(env, "takeOutputPipe: fd must not be negative");
  int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);  // always O_CLOEXEC
  if (fd < 0) {
    snprintf(step, sizeof step, "take output pipe: pidfd_getfd fd %d", target);
    return tx_throw(env, step, errno);
  }
  struct statfs fs;
  int r = fstatfs(fd, &fs);
  if (r != 0 || fs.f_type != PIPEFS_MAGIC) {
    int err = r != 0 ? errno : EBADF;
    close(fd);
    snprintf(step, sizeof step, "take output pipe: fd %d is not a pipe", target);
    return tx_throw(env, step, err);
  }
  napi_create_int32(env, fd, &result);
  return result;
}

void tx_register_output(napi_env env, napi_value addon, napi_value constants) {
  tx_set_function(env, addon, "outputPipe", js_output_pipe);
  tx_set_function(env, addon, "takeOutputPipe", js_take_output_pipe);
  tx_set_constant(env, constants, "STDOUT_READ_FD", TX_STDOUT_READ_FD);
  tx_set_constant(env, constants, "STDERR_READ_FD", TX_STDERR_READ_FD);
}
