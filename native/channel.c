// The prebuild task channel (docs/prebuilds.md): a unix socket pair between the daemon and init, pipes
// for each task's output, and sending a frame with fds attached (SCM_RIGHTS, unix(7)). Node has no API
// for any of the three.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_SENT_FDS 8
#define SEND_WAIT_MS 5000

static napi_value fd_pair(napi_env env, const int fds[2]) {
  napi_value arr, v;
  napi_create_array_with_length(env, 2, &arr);
  for (uint32_t i = 0; i < 2; i++) {
    napi_create_int32(env, fds[i], &v);
    napi_set_element(env, arr, i, v);
  }
  return arr;
}

// socketPair() -> [a, b]: AF_UNIX stream sockets, both close-on-exec.
static napi_value js_socket_pair(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) return tx_throw(env, "socketpair", errno);
  return fd_pair(env, fds);
}

// pipe() -> [readEnd, writeEnd], both close-on-exec.
static napi_value js_pipe(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return tx_throw(env, "pipe2", errno);
  return fd_pair(env, fds);
}

// Waits (bounded) until fd takes more bytes: the peer is init, which reads a frame as soon as it asked.
static int wait_writable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int n;
  do n = poll(&p, 1, SEND_WAIT_MS);
  while (n < 0 && errno == EINTR);
  if (n == 0) errno = ETIMEDOUT;
  return n > 0 ? 0 : -1;
}

static int send_all(int sock, const char *data, size_t len, const int *fds, uint32_t nfds) {
  char control[CMSG_SPACE(sizeof(int) * MAX_SENT_FDS)];
  memset(control, 0, sizeof control);
  size_t sent = 0;
  while (sent < len || (len == 0 && nfds > 0 && sent == 0)) {
    struct iovec iov = {.iov_base = (void *)(data + sent), .iov_len = len - sent};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (sent == 0 && nfds > 0) {  // the fds ride on the first byte of the frame
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
      struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
      memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (wait_writable(sock) < 0) return -1;
      continue;
    }
    if (n < 0) return -1;
    if (n == 0 && len == 0) break;
    sent += (size_t)n;
  }
  return 0;
}

// sendWithFds(socketFd, data: Buffer, fds: number[]): all of data, with fds attached to its first byte.
// The fds stay the caller's (the kernel passes duplicates). NativeError `sendmsg` (EPIPE when the peer is gone).
static napi_value js_send_with_fds(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int32_t sock;
  void *data = NULL;
  size_t len = 0;
  bool is_buffer = false, is_array = false;
  uint32_t nfds = 0;
  int fds[MAX_SENT_FDS];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !tx_get_int32(env, argv[0], "sendWithFds: socketFd must be an fd", &sock)) return argc < 3 ? tx_type_error(env, "sendWithFds(socketFd, data, fds)") : NULL;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer || napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok)
    return tx_type_error(env, "sendWithFds: data must be a Buffer");
  if (napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[2], &nfds) != napi_ok || nfds > MAX_SENT_FDS)
    return tx_type_error(env, "sendWithFds: fds must be an array of at most 8 fds");
  if (len == 0 && nfds > 0) return tx_type_error(env, "sendWithFds: fds need at least one byte of data");
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value v;
    napi_get_element(env, argv[2], i, &v);
    if (!tx_get_int32(env, v, "sendWithFds: fds must be fds", &fds[i])) return NULL;
  }
  if (send_all(sock, data, len, fds, nfds) < 0) return tx_throw(env, "sendmsg", errno);
  return tx_undefined(env);
}

void tx_register_channel(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "socketPair", js_socket_pair);
  tx_set_function(env, addon, "pipe", js_pipe);
  tx_set_function(env, addon, "sendWithFds", js_send_with_fds);
}
