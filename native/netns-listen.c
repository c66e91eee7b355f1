// listenInNetns(pid, port): a TCP socket listening on 127.0.0.1:port inside another process's network
// namespace, returned as an fd to serve from the daemon (src/source/fetch-proxy.ts). A socket keeps the
// namespace it was created in (socket(7), network_namespaces(7)), so the daemon can answer a sandboxed
// git on that sandbox's loopback while the sandbox has no other way out.
// setns(CLONE_NEWNET) moves only the calling thread; it is switched back at once, and a thread that
// cannot go back aborts the process rather than leave the JS thread in a workspace's namespace.
#define _GNU_SOURCE
#include "tetrix.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_here(uint32_t port, const char **step) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return *step = "netns listen: socket", -1;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    int err = errno;
    close(fd);
    errno = err;
    return *step = "netns listen: bind 127.0.0.1", -1;
  }
  if (listen(fd, 64) < 0) {
    int err = errno;
    close(fd);
    errno = err;
    return *step = "netns listen: listen", -1;
  }
  return fd;
}

static napi_value js_listen_in_netns(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t pid;
  uint32_t port;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "listenInNetns(pid, port)");
  if (!tx_get_int32(env, argv[0], "listenInNetns: pid must be an integer", &pid)) return NULL;
  if (!tx_get_uint32(env, argv[1], "listenInNetns: port must be an integer", &port)) return NULL;
  if (pid <= 0 || port == 0 || port > 65535) return tx_type_error(env, "listenInNetns: pid > 0, port 1-65535");

  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
  int target = open(path, O_RDONLY | O_CLOEXEC);
  if (target < 0) return tx_throw(env, "netns listen: open /proc/<pid>/ns/net", errno);
  int home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (home < 0) {
    int err = errno;
    close(target);
    return tx_throw(env, "netns listen: open /proc/thread-self/ns/net", err);
  }
  if (setns(target, CLONE_NEWNET) < 0) {
    int err = errno;
    close(target);
    close(home);
    return tx_throw(env, "netns listen: setns", err);
  }
  const char *step = NULL;
  int fd = listen_here(port, &step);
  int err = errno;
  if (setns(home, CLONE_NEWNET) < 0) {
    fprintf(stderr, "tetrix netns-listen: cannot return to the daemon's network namespace (errno %d)\n", errno);
    abort();
  }
  close(target);
  close(home);
  if (fd < 0) return tx_throw(env, step, err);
  napi_create_int32(env, fd, &result);
  return result;
}

void tx_register_netns_listen(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "listenInNetns", js_listen_in_netns);
}
