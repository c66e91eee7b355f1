// overlayMountLayers(target, lowerDirs, upper, work): an overlay of many lower layers through the new mount
// API (fsopen/fsconfig/fsmount/move_mount, Linux >= 5.2), each lower layer passed as its own "lowerdir+"
// parameter (overlayfs, Linux >= 6.8). mount(2) takes its options in one page, so a lowerdir= string of
// fifty layers under long workspace paths would not fit; one fsconfig call per layer has no such limit and
// no ':' or ',' escaping either. The mount is nodev (an image's device node is no door to a host device)
// and tries metacopy=on first (a chmod or chown copies up metadata only), as src/sandbox/rootfs.ts does.
// Errors name the step: "overlay fsconfig lowerdir+ <path>: ENOENT".
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef FSCONFIG_SET_FLAG
#define FSCONFIG_SET_FLAG 0
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_CMD_CREATE 6
#endif
#ifndef FSMOUNT_CLOEXEC
#define FSMOUNT_CLOEXEC 0x1
#endif

typedef struct {
  char *target, *upper, *work;
  char **lowers;
  uint32_t lower_count;
  char step[512];
} overlay_args;

static void free_overlay_args(void *p) {
  overlay_args *a = p;
  free(a->target);
  free(a->upper);
  free(a->work);
  for (uint32_t i = 0; a->lowers && i < a->lower_count; i++) free(a->lowers[i]);
  free(a->lowers);
  free(a);
}

static int set_string(int fs, const char *key, const char *value, overlay_args *a) {
  if (syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0) == 0) return 0;
  int err = errno;
  snprintf(a->step, sizeof a->step, "overlay fsconfig %s %.400s", key, value);
  return err;
}

// One attempt; 0 or an errno with a->step set. Nothing stays open or attached on failure.
static int try_overlay(overlay_args *a, bool metacopy) {
  int fs = (int)syscall(SYS_fsopen, "overlay", FSOPEN_CLOEXEC);
  if (fs < 0) {
    snprintf(a->step, sizeof a->step, "overlay fsopen");
    return errno;
  }
  int err = 0;
  // Top first, as overlayfs(5) orders lowerdir=.
  for (uint32_t i = 0; i < a->lower_count && !err; i++) err = set_string(fs, "lowerdir+", a->lowers[i], a);
  if (!err) err = set_string(fs, "upperdir", a->upper, a);
  if (!err) err = set_string(fs, "workdir", a->work, a);
  if (!err && metacopy) err = set_string(fs, "metacopy", "on", a);
  if (!err && syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) {
    err = errno;
    snprintf(a->step, sizeof a->step, "overlay fsconfig create %.400s", a->target);
  }
  int mnt = -1;
  if (!err && (mnt = (int)syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_NODEV)) < 0) {
    err = errno;
    snprintf(a->step, sizeof a->step, "overlay fsmount %.400s", a->target);
  }
  if (!err && syscall(SYS_move_mount, mnt, "", AT_FDCWD, a->target, MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    err = errno;
    snprintf(a->step, sizeof a->step, "overlay move_mount %.400s", a->target);
  }
  if (mnt >= 0) close(mnt);
  close(fs);
  return err;
}

static int overlay_work(void *p, const char **step) {
  overlay_args *a = p;
  *step = a->step;
  int err = try_overlay(a, true);
  // A kernel or filesystem that refuses metacopy gets a plain overlay, as rootfs.ts's mountOverlay does.
  if (err == EINVAL && strncmp(a->step, "overlay fsconfig metacopy", 25) == 0) err = try_overlay(a, false);
  else if (err == EINVAL && strncmp(a->step, "overlay fsconfig create", 23) == 0) err = try_overlay(a, false);
  return err;
}

static napi_value js_overlay_mount_layers(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  uint32_t count = 0;
  if (argc < 4 || napi_get_array_length(env, argv[1], &count) != napi_ok || count == 0 || count > 500) {
    return tx_type_error(env, "overlayMountLayers(target, lowerDirs (1..500), upper, work)");
  }
  overlay_args *a = calloc(1, sizeof *a);
  if (!a || !(a->lowers = calloc(count, sizeof *a->lowers))) {
    free(a);
    return tx_throw(env, "overlayMountLayers", ENOMEM);
  }
  if (!tx_get_string(env, argv[0], "overlayMountLayers: target must be a string", &a->target) ||
      !tx_get_string(env, argv[2], "overlayMountLayers: upper must be a string", &a->upper) ||
      !tx_get_string(env, argv[3], "overlayMountLayers: work must be a string", &a->work)) {
    free_overlay_args(a);
    return NULL;
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value v;
    napi_get_element(env, argv[1], i, &v);
    a->lower_count = i + 1;
    if (!tx_get_string(env, v, "overlayMountLayers: lowerDirs must be strings", &a->lowers[i])) {
      free_overlay_args(a);
      return NULL;
    }
  }
  return tx_run_async(env, "overlay", overlay_work, a, free_overlay_args);
}

void tx_register_overlay(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "overlayMountLayers", js_overlay_mount_layers);
}
