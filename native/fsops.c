// File system calls Node lacks, for backing up and restoring an overlay upper layer (src/content/):
// mknodat for overlayfs whiteouts and the xattr calls (opaque directories, file capabilities, user.*).
// Synchronous: each is one short call on a local file system, made by the archive runner, not the daemon.
//
// An xattr target is a file descriptor (f*xattr) or a path (l*xattr: the last component is never followed,
// so callers pass /proc/self/fd/<dirfd>/<name> to stay inside a directory they hold open).
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

// The kernel's limits (linux/limits.h): no list or value is longer, so one call with these sizes suffices.
#define LIST_MAX 65536
#define VALUE_MAX 65536

typedef struct {
  int fd;      // >= 0: use the f* call
  char *path;  // else the l* call on this path (malloc'd)
} xattr_target;

static bool get_target(napi_env env, napi_value v, const char *what, xattr_target *out) {
  napi_valuetype t;
  out->fd = -1;
  out->path = NULL;
  if (napi_typeof(env, v, &t) != napi_ok) return tx_type_error(env, what), false;
  if (t == napi_number) {
    if (!tx_get_int32(env, v, what, &out->fd)) return false;
    if (out->fd < 0) return tx_type_error(env, what), false;
    return true;
  }
  return tx_get_string(env, v, what, &out->path);
}

// A step name that says which call and which attribute failed: "lsetxattr trusted.overlay.opaque".
static napi_value throw_xattr(napi_env env, const char *call, const char *name, int err) {
  char step[320];
  snprintf(step, sizeof step, "%s%s%s", call, name ? " " : "", name ? name : "");
  return tx_throw(env, step, err);
}

// listXattrs(fdOrPath) -> string[]; [] where the file system has no xattrs (ENOTSUP).
static napi_value js_list_xattrs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result = NULL;
  xattr_target target;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !get_target(env, argv[0], "listXattrs(fdOrPath)", &target)) return NULL;
  // Most files have none: a small buffer on the stack answers those without an allocation.
  char small[256];
  char *buf = small;
  size_t size = sizeof small;
  ssize_t n = target.path ? llistxattr(target.path, buf, size) : flistxattr(target.fd, buf, size);
  if (n < 0 && errno == ERANGE) {
    size = LIST_MAX;
    buf = malloc(size);
    if (!buf) {
      free(target.path);
      return tx_throw(env, "malloc", ENOMEM);
    }
    n = target.path ? llistxattr(target.path, buf, size) : flistxattr(target.fd, buf, size);
  }
  if (n < 0 && errno == ENOTSUP) n = 0;
  if (n < 0) {
    throw_xattr(env, target.path ? "llistxattr" : "flistxattr", NULL, errno);
  } else {
    napi_create_array(env, &result);
    uint32_t i = 0;
    for (ssize_t off = 0; off < n; off += (ssize_t)strnlen(buf + off, (size_t)(n - off)) + 1) {
      napi_value name;
      napi_create_string_utf8(env, buf + off, NAPI_AUTO_LENGTH, &name);
      napi_set_element(env, result, i++, name);
    }
  }
  if (buf != small) free(buf);
  free(target.path);
  return result;
}

// getXattr(fdOrPath, name) -> Buffer, or null when the attribute is not set (ENODATA).
static napi_value js_get_xattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result = NULL;
  xattr_target target;
  char *name = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "getXattr(fdOrPath, name)");
  if (!get_target(env, argv[0], "getXattr: fdOrPath must be an fd or a path", &target)) return NULL;
  char *buf = NULL;
  if (!tx_get_string(env, argv[1], "getXattr: name must be a string", &name)) goto out;
  buf = malloc(VALUE_MAX);
  if (!buf) {
    tx_throw(env, "malloc", ENOMEM);
    goto out;
  }
  ssize_t n = target.path ? lgetxattr(target.path, name, buf, VALUE_MAX) : fgetxattr(target.fd, name, buf, VALUE_MAX);
  if (n >= 0) {
    napi_create_buffer_copy(env, (size_t)n, buf, NULL, &result);
  } else if (errno == ENODATA) {
    napi_get_null(env, &result);
  } else {
    throw_xattr(env, target.path ? "lgetxattr" : "fgetxattr", name, errno);
  }
out:
  free(buf);
  free(name);
  free(target.path);
  return result;
}

// setXattr(fdOrPath, name, value: Buffer): creates or replaces the attribute.
static napi_value js_set_xattr(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result = NULL;
  xattr_target target;
  char *name = NULL;
  void *data;
  size_t len;
  bool is_buffer = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) return tx_type_error(env, "setXattr(fdOrPath, name, value)");
  if (!get_target(env, argv[0], "setXattr: fdOrPath must be an fd or a path", &target)) return NULL;
  if (!tx_get_string(env, argv[1], "setXattr: name must be a string", &name)) goto out;
  if (napi_is_buffer(env, argv[2], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) {
    tx_type_error(env, "setXattr: value must be a Buffer");
    goto out;
  }
  int rc = target.path ? lsetxattr(target.path, name, data, len, 0) : fsetxattr(target.fd, name, data, len, 0);
  if (rc != 0) {
    throw_xattr(env, target.path ? "lsetxattr" : "fsetxattr", name, errno);
  } else {
    result = tx_undefined(env);
  }
out:
  free(name);
  free(target.path);
  return result;
}

// mkwhiteoutat(dirFd, name): an overlayfs whiteout, the character device 0/0 with mode 0 (what overlayfs
// itself creates, see Documentation/filesystems/overlayfs.rst). The only device node the addon makes, and
// only relative to a directory fd: name must be a single component, so no path is walked here.
static napi_value js_mkwhiteoutat(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result = NULL;
  int32_t dir_fd;
  char *name = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "mkwhiteoutat(dirFd, name)");
  if (!tx_get_int32(env, argv[0], "mkwhiteoutat: dirFd must be an fd", &dir_fd) ||
      !tx_get_string(env, argv[1], "mkwhiteoutat: name must be a string", &name)) {
    return NULL;
  }
  if (dir_fd < 0 || name[0] == '\0' || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..")) {
    tx_type_error(env, "mkwhiteoutat: name must be one path component in a directory fd");
  } else if (mknodat(dir_fd, name, S_IFCHR | 0, makedev(0, 0)) != 0) {
    tx_throw(env, "mknodat whiteout", errno);
  } else {
    result = tx_undefined(env);
  }
  free(name);
  return result;
}

void tx_register_fsops(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "listXattrs", js_list_xattrs);
  tx_set_function(env, addon, "getXattr", js_get_xattr);
  tx_set_function(env, addon, "setXattr", js_set_xattr);
  tx_set_function(env, addon, "mkwhiteoutat", js_mkwhiteoutat);
}
