// fscrypt v2 for workspace volumes (src/storage/): the ioctls of Documentation/filesystems/fscrypt.rst.
// A key is added to one filesystem's own keyring (not a process keyring), named by the identifier the
// kernel derives from it; a directory's policy names that identifier. Key bytes pass through here only:
// the copy made for the ioctl is wiped with explicit_bzero before the call returns.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/fscrypt.h>
#include <sys/ioctl.h>

#define MAX_RAW_KEY 64

static int open_dir(const char *path) {
  return open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
}

static bool get_identifier(napi_env env, napi_value v, uint8_t out[FSCRYPT_KEY_IDENTIFIER_SIZE]) {
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, v, &data, &len) != napi_ok || len != FSCRYPT_KEY_IDENTIFIER_SIZE) {
    tx_type_error(env, "identifier must be a 16-byte Buffer");
    return false;
  }
  memcpy(out, data, FSCRYPT_KEY_IDENTIFIER_SIZE);
  return true;
}

// fscryptAddKey(dir, key: Buffer) -> Buffer: FS_IOC_ADD_ENCRYPTION_KEY on dir's filesystem; the kernel's
// identifier for the key (HKDF-SHA512 of it, so it names the key without revealing it).
static napi_value js_add_key(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result = NULL;
  char *dir = NULL;
  void *key;
  size_t key_len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "fscryptAddKey(dir, key)");
  if (!tx_get_string(env, argv[0], "fscryptAddKey: dir must be a string", &dir)) return NULL;
  if (napi_get_buffer_info(env, argv[1], &key, &key_len) != napi_ok || key_len < 16 || key_len > MAX_RAW_KEY) {
    free(dir);
    return tx_type_error(env, "fscryptAddKey: key must be a Buffer of 16..64 bytes");
  }
  size_t size = sizeof(struct fscrypt_add_key_arg) + MAX_RAW_KEY;
  struct fscrypt_add_key_arg *arg = calloc(1, size);
  int fd = open_dir(dir);
  if (!arg) {
    tx_throw(env, "fscryptAddKey", ENOMEM);
  } else if (fd < 0) {
    tx_throw(env, "open volume dir", errno);
  } else {
    arg->key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
    arg->raw_size = (uint32_t)key_len;
    memcpy(arg->raw, key, key_len);
    int rc = ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg);
    int err = errno;
    explicit_bzero(arg->raw, MAX_RAW_KEY);
    if (rc != 0) tx_throw(env, "FS_IOC_ADD_ENCRYPTION_KEY", err);
    else napi_create_buffer_copy(env, FSCRYPT_KEY_IDENTIFIER_SIZE, arg->key_spec.u.identifier, NULL, &result);
  }
  if (fd >= 0) close(fd);
  free(arg);
  free(dir);
  return result;
}

// fscryptSetPolicy(dir, identifier): a v2 policy on an empty directory: AES-256-XTS contents, AES-256-CTS
// names, names padded to 32 bytes (so their lengths say less).
static napi_value js_set_policy(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char *dir = NULL;
  struct fscrypt_policy_v2 policy;
  memset(&policy, 0, sizeof policy);
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "fscryptSetPolicy(dir, identifier)");
  if (!tx_get_string(env, argv[0], "fscryptSetPolicy: dir must be a string", &dir)) return NULL;
  if (!get_identifier(env, argv[1], policy.master_key_identifier)) {
    free(dir);
    return NULL;
  }
  policy.version = FSCRYPT_POLICY_V2;
  policy.contents_encryption_mode = FSCRYPT_MODE_AES_256_XTS;
  policy.filenames_encryption_mode = FSCRYPT_MODE_AES_256_CTS;
  policy.flags = FSCRYPT_POLICY_FLAGS_PAD_32;
  int fd = open_dir(dir);
  free(dir);
  if (fd < 0) return tx_throw(env, "open dir", errno);
  int rc = ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, &policy);
  int err = errno;
  close(fd);
  if (rc != 0) return tx_throw(env, "FS_IOC_SET_ENCRYPTION_POLICY", err);
  return tx_undefined(env);
}

// fscryptPolicyOf(dir) -> { identifier, contentsMode, filenamesMode, flags } or null (not encrypted).
static napi_value js_policy_of(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result = NULL, v;
  char *dir = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || !tx_get_string(env, argv[0], "fscryptPolicyOf(dir)", &dir)) return NULL;
  int fd = open_dir(dir);
  free(dir);
  if (fd < 0) return tx_throw(env, "open dir", errno);
  struct fscrypt_get_policy_ex_arg arg;
  memset(&arg, 0, sizeof arg);
  arg.policy_size = sizeof arg.policy;
  int rc = ioctl(fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, &arg);
  int err = errno;
  close(fd);
  if (rc != 0 && (err == ENODATA || err == ENOTTY || err == EOPNOTSUPP)) {
    napi_get_null(env, &result);
    return result;
  }
  if (rc != 0) return tx_throw(env, "FS_IOC_GET_ENCRYPTION_POLICY_EX", err);
  if (arg.policy.version != FSCRYPT_POLICY_V2) return tx_throw(env, "FS_IOC_GET_ENCRYPTION_POLICY_EX: not a v2 policy", EINVAL);
  napi_create_object(env, &result);
  napi_create_buffer_copy(env, FSCRYPT_KEY_IDENTIFIER_SIZE, arg.policy.v2.master_key_identifier, NULL, &v);
  napi_set_named_property(env, result, "identifier", v);
  napi_create_uint32(env, arg.policy.v2.contents_encryption_mode, &v);
  napi_set_named_property(env, result, "contentsMode", v);
  napi_create_uint32(env, arg.policy.v2.filenames_encryption_mode, &v);
  napi_set_named_property(env, result, "filenamesMode", v);
  napi_create_uint32(env, arg.policy.v2.flags, &v);
  napi_set_named_property(env, result, "flags", v);
  return result;
}

// fscryptKeyStatus(dir, identifier) -> 'absent' | 'present' | 'incompletely-removed'.
static napi_value js_key_status(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result = NULL;
  char *dir = NULL;
  struct fscrypt_get_key_status_arg arg;
  memset(&arg, 0, sizeof arg);
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "fscryptKeyStatus(dir, identifier)");
  if (!tx_get_string(env, argv[0], "fscryptKeyStatus: dir must be a string", &dir)) return NULL;
  if (!get_identifier(env, argv[1], arg.key_spec.u.identifier)) {
    free(dir);
    return NULL;
  }
  arg.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
  int fd = open_dir(dir);
  free(dir);
  if (fd < 0) return tx_throw(env, "open volume dir", errno);
  int rc = ioctl(fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, &arg);
  int err = errno;
  close(fd);
  if (rc != 0) return tx_throw(env, "FS_IOC_GET_ENCRYPTION_KEY_STATUS", err);
  const char *s = arg.status == FSCRYPT_KEY_STATUS_PRESENT ? "present"
                : arg.status == FSCRYPT_KEY_STATUS_INCOMPLETELY_REMOVED ? "incompletely-removed" : "absent";
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &result);
  return result;
}

typedef struct {
  char *dir;
  uint8_t identifier[FSCRYPT_KEY_IDENTIFIER_SIZE];
} remove_args;

static void free_remove_args(void *p) {
  remove_args *a = p;
  free(a->dir);
  free(a);
}

// Removal syncs the filesystem and evicts the key's inodes (their plaintext pages go with them), so it
// runs on a worker. A file still open keeps its own key until closed: that is reported as EBUSY.
static int remove_work(void *p, const char **step) {
  remove_args *a = p;
  *step = "open volume dir";
  int fd = open_dir(a->dir);
  if (fd < 0) return errno;
  struct fscrypt_remove_key_arg arg;
  memset(&arg, 0, sizeof arg);
  arg.key_spec.type = FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER;
  memcpy(arg.key_spec.u.identifier, a->identifier, FSCRYPT_KEY_IDENTIFIER_SIZE);
  // ALL_USERS: as root, every user's claim on the key goes, not only ours (fscrypt.rst).
  int rc = ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, &arg);
  int err = errno;
  close(fd);
  *step = "FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS";
  if (rc != 0) return err;
  if (arg.removal_status_flags & FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY) {
    *step = "FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS (files still in use)";
    return EBUSY;
  }
  return 0;
}

// fscryptRemoveKey(dir, identifier) -> Promise<void>. ENOKEY: the key was not there.
static napi_value js_remove_key(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "fscryptRemoveKey(dir, identifier)");
  remove_args *a = calloc(1, sizeof *a);
  if (!a) return tx_throw(env, "fscryptRemoveKey", ENOMEM);
  if (!tx_get_string(env, argv[0], "fscryptRemoveKey: dir must be a string", &a->dir) ||
      !get_identifier(env, argv[1], a->identifier)) {
    free_remove_args(a);
    return NULL;
  }
  return tx_run_async(env, "fscryptRemoveKey", remove_work, a, free_remove_args);
}

void tx_register_fscrypt(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "fscryptAddKey", js_add_key);
  tx_set_function(env, addon, "fscryptSetPolicy", js_set_policy);
  tx_set_function(env, addon, "fscryptPolicyOf", js_policy_of);
  tx_set_function(env, addon, "fscryptKeyStatus", js_key_status);
  tx_set_function(env, addon, "fscryptRemoveKey", js_remove_key);
}
