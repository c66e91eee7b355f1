// sd_notify(3) without libsystemd: one datagram to the unix socket named in $NOTIFY_SOCKET.
// A leading '@' names an abstract socket (sd_notify's convention).
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static napi_value js_sd_notify(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  char *state = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return tx_type_error(env, "sdNotify(state)");
  if (!tx_get_string(env, argv[0], "sdNotify: state must be a string", &state)) return NULL;

  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !path[0]) {
    free(state);
    napi_get_boolean(env, false, &result);
    return result;
  }
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  size_t len = strlen(path);
  if ((path[0] != '/' && path[0] != '@') || len >= sizeof addr.sun_path) {
    free(state);
    return tx_throw(env, "sd_notify: NOTIFY_SOCKET", EINVAL);
  }
  memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/' ? 1 : 0));

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    free(state);
    return tx_throw(env, "sd_notify: socket", err);
  }
  ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, addr_len);
  int err = errno;
  close(fd);
  free(state);
  if (n < 0) return tx_throw(env, "sd_notify: sendto", err);
  napi_get_boolean(env, true, &result);
  return result;
}

// The pid of the process serving a unix stream socket (SO_PEERCRED of a connection to it), or 0 when nothing
// answers (ENOENT, ECONNREFUSED: a socket file left by a dead daemon). A daemon uses it to never take over
// a socket another live daemon serves.
static napi_value js_unix_socket_peer_pid(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  char *path = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return tx_type_error(env, "unixSocketPeerPid(path)");
  if (!tx_get_string(env, argv[0], "unixSocketPeerPid: path must be a string", &path)) return NULL;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  size_t len = strlen(path);
  if (len == 0 || len >= sizeof addr.sun_path) {
    free(path);
    return tx_throw(env, "unix socket probe: path", ENAMETOOLONG);
  }
  memcpy(addr.sun_path, path, len);
  free(path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return tx_throw(env, "unix socket probe: socket", errno);
  int pid = 0;
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
    struct ucred cred;
    socklen_t cred_len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) != 0) {
      int err = errno;
      close(fd);
      return tx_throw(env, "unix socket probe: SO_PEERCRED", err);
    }
    pid = cred.pid;
  } else if (errno != ENOENT && errno != ECONNREFUSED) {
    int err = errno;
    close(fd);
    return tx_throw(env, "unix socket probe: connect", err);
  }
  close(fd);
  napi_create_int32(env, pid, &result);
  return result;
}

void tx_register_notify(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "sdNotify", js_sd_notify);
  tx_set_function(env, addon, "unixSocketPeerPid", js_unix_socket_peer_pid);
}
