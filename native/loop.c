// Loop devices for workspace volumes (src/storage/): a sparse filesystem image attached with LOOP_CONFIGURE
// (Linux 5.8, loop(4)) and mounted in the same worker call. The device is configured LO_FLAGS_AUTOCLEAR and
// the call holds its fd until the mount holds the device: so whatever happens (the daemon killed between
// the two steps included), the kernel detaches the device on its last close, and no loop device outlives
// the mount that uses it.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>

// LOOP_CTL_GET_FREE can hand the same free device to two processes; the loser's LOOP_CONFIGURE is EBUSY.
#define CONFIGURE_ATTEMPTS 32

typedef struct {
  char *image, *target, *fstype, *data, *label;
  uint32_t flags;
  bool direct_io;
  int minor;          // out
  char step[96];
} loop_mount_args;

typedef struct {
  napi_async_work async;
  napi_deferred deferred;
  loop_mount_args *a;
  int err;
} loop_job;

static void free_args(loop_mount_args *a) {
  if (!a) return;
  free(a->image);
  free(a->target);
  free(a->fstype);
  free(a->data);
  free(a->label);
  free(a);
}

static int fail(loop_mount_args *a, const char *step, int err) {
  snprintf(a->step, sizeof a->step, "%s", step);
  return err;
}

// Configures a free loop device over backing; its fd in *dev_fd (still open), its number in a->minor.
static int configure_free_device(loop_mount_args *a, int ctl, int backing, int *dev_fd) {
  struct loop_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.fd = (uint32_t)backing;
  cfg.block_size = 4096;  // the volumes' block size: direct I/O to the host file stays aligned
  cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (a->direct_io ? LO_FLAGS_DIRECT_IO : 0);
  snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%s", a->label);
  for (int attempt = 0; attempt < CONFIGURE_ATTEMPTS; attempt++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) return fail(a, "LOOP_CTL_GET_FREE", errno);
    char dev[32];
    snprintf(dev, sizeof dev, "/dev/loop%d", n);
    int fd = open(dev, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT || errno == ENXIO) continue;  // removed by another process meanwhile
      return fail(a, "open /dev/loopN", errno);
    }
    if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) {
      a->minor = n;
      *dev_fd = fd;
      return 0;
    }
    int err = errno;
    close(fd);
    if (err != EBUSY) return fail(a, "LOOP_CONFIGURE", err);
  }
  return fail(a, "LOOP_CONFIGURE (every free device was taken meanwhile)", EBUSY);
}

static int loop_mount_work(loop_mount_args *a) {
  int ctl = -1, backing = -1, dev_fd = -1, err = 0;
  ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) return fail(a, "open /dev/loop-control", errno);
  backing = open(a->image, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (backing < 0) {
    err = fail(a, "open image", errno);
    goto out;
  }
  err = configure_free_device(a, ctl, backing, &dev_fd);
  if (err) goto out;
  char dev[32];
  snprintf(dev, sizeof dev, "/dev/loop%d", a->minor);
  if (mount(dev, a->target, a->fstype, a->flags, a->data[0] ? a->data : NULL) != 0) {
    err = fail(a, "mount", errno);
    ioctl(dev_fd, LOOP_CLR_FD, 0);  // autoclear would do it at close; say so at once
  }
out:
  if (dev_fd >= 0) close(dev_fd);
  if (backing >= 0) close(backing);
  close(ctl);
  return err;
}

static void execute(napi_env env, void *data) {
  (void)env;
  loop_job *job = data;
  job->err = loop_mount_work(job->a);
}

static void complete(napi_env env, napi_status status, void *data) {
  loop_job *job = data;
  (void)status;
  if (job->err) {
    napi_reject_deferred(env, job->deferred, tx_native_error(env, job->a->step, job->err));
  } else {
    napi_value minor;
    napi_create_int32(env, job->a->minor, &minor);
    napi_resolve_deferred(env, job->deferred, minor);
  }
  napi_delete_async_work(env, job->async);
  free_args(job->a);
  free(job);
}

// loopMount(image, target, fstype, flags, data, label, directIo) -> Promise<number>: the loop device's
// number. NativeError naming the step (LOOP_CONFIGURE, mount, ...) and errno; nothing stays attached then.
static napi_value js_loop_mount(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7], promise, resource;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 7) return tx_type_error(env, "loopMount(image, target, fstype, flags, data, label, directIo)");
  loop_mount_args *a = calloc(1, sizeof *a);
  if (!a) return tx_throw(env, "loopMount", ENOMEM);
  if (!tx_get_string(env, argv[0], "loopMount: image must be a string", &a->image) ||
      !tx_get_string(env, argv[1], "loopMount: target must be a string", &a->target) ||
      !tx_get_string(env, argv[2], "loopMount: fstype must be a string", &a->fstype) ||
      !tx_get_uint32(env, argv[3], "loopMount: flags must be an unsigned 32-bit number", &a->flags) ||
      !tx_get_string(env, argv[4], "loopMount: data must be a string", &a->data) ||
      !tx_get_string(env, argv[5], "loopMount: label must be a string", &a->label) ||
      napi_get_value_bool(env, argv[6], &a->direct_io) != napi_ok) {
    free_args(a);
    return NULL;
  }
  loop_job *job = calloc(1, sizeof *job);
  if (!job || napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    free(job);
    free_args(a);
    return tx_throw(env, "loopMount", ENOMEM);
  }
  job->a = a;
  napi_create_string_utf8(env, "loopMount", NAPI_AUTO_LENGTH, &resource);
  napi_create_async_work(env, NULL, resource, execute, complete, job, &job->async);
  napi_queue_async_work(env, job->async);
  return promise;
}

// loopClear(minor): LOOP_CLR_FD. On a device still in use the kernel only marks it autoclear (it goes at
// its last close). ENXIO: nothing was attached.
static napi_value js_loop_clear(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  uint32_t minor;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !tx_get_uint32(env, argv[0], "loopClear(minor)", &minor)) return NULL;
  char dev[32];
  snprintf(dev, sizeof dev, "/dev/loop%u", minor);
  int fd = open(dev, O_RDWR | O_CLOEXEC);
  if (fd < 0) return tx_throw(env, "open /dev/loopN", errno);
  int rc = ioctl(fd, LOOP_CLR_FD, 0);
  int err = errno;
  close(fd);
  if (rc != 0) return tx_throw(env, "LOOP_CLR_FD", err);
  return tx_undefined(env);
}

void tx_register_loop(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "loopMount", js_loop_mount);
  tx_set_function(env, addon, "loopClear", js_loop_clear);
}
