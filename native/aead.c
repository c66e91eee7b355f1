// AES-256-GCM sealing into a caller's buffer, for the repository's packs (src/content/repo/snapshots.ts).
// Node's cipher API returns a new buffer for every update and tag, so a backup of 1 GiB left about 1 GiB of
// short-lived sealed copies for V8 to collect (docs/backup-format.md, "Benchmark against restic"). Here the
// ciphertext goes straight into the pack. The format is crypto/aead.ts's sealGcm: ciphertext || tag, which
// openGcm opens. OpenSSL is the one Node links (its EVP symbols resolve against the node binary).
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>

#define GCM_KEY 32
#define GCM_NONCE 12
#define GCM_TAG 16
#define MAX_PARTS 8

typedef struct {
  const uint8_t *p;
  size_t len;
} span;

static bool buffer_arg(napi_env env, napi_value v, const char *what, span *out) {
  void *data = NULL;
  if (napi_get_buffer_info(env, v, &data, &out->len) != napi_ok) {
    tx_type_error(env, what);
    return false;
  }
  out->p = data;
  return true;
}

// One GCM pass over the parts into out; false on any OpenSSL failure (none is expected with valid sizes).
static bool seal(const span *key, const span *nonce, const span *aad, const span *parts, size_t nparts, uint8_t *out) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  if (!ctx) return false;
  int n = 0;
  bool ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key->p, nonce->p) == 1 &&
            (aad->len == 0 || EVP_EncryptUpdate(ctx, NULL, &n, aad->p, (int)aad->len) == 1);
  size_t at = 0;
  for (size_t i = 0; ok && i < nparts; i++) {
    if (parts[i].len == 0) continue;
    ok = EVP_EncryptUpdate(ctx, out + at, &n, parts[i].p, (int)parts[i].len) == 1;
    at += (size_t)n;
  }
  ok = ok && EVP_EncryptFinal_ex(ctx, out + at, &n) == 1;
  at += ok ? (size_t)n : 0;
  ok = ok && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, GCM_TAG, out + at) == 1;
  EVP_CIPHER_CTX_free(ctx);
  return ok;
}

// gcmSealInto(key: Buffer(32), nonce: Buffer(12), aad: Buffer, parts: Buffer[], out: Buffer, offset) -> number
// Writes ciphertext || tag of the concatenated parts at out[offset..] and returns its length; a RangeError
// (thrown before anything is written) when it does not fit.
static napi_value gcm_seal_into(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6) return tx_type_error(env, "gcmSealInto: 6 arguments");
  span key, nonce, aad, out, parts[MAX_PARTS];
  if (!buffer_arg(env, argv[0], "gcmSealInto: key must be a Buffer", &key) ||
      !buffer_arg(env, argv[1], "gcmSealInto: nonce must be a Buffer", &nonce) ||
      !buffer_arg(env, argv[2], "gcmSealInto: aad must be a Buffer", &aad) ||
      !buffer_arg(env, argv[4], "gcmSealInto: out must be a Buffer", &out))
    return NULL;
  if (key.len != GCM_KEY || nonce.len != GCM_NONCE) return tx_type_error(env, "gcmSealInto: a 32-byte key and a 12-byte nonce");
  uint32_t count = 0, offset = 0;
  if (napi_get_array_length(env, argv[3], &count) != napi_ok || count > MAX_PARTS)
    return tx_type_error(env, "gcmSealInto: parts must be an array of at most 8 Buffers");
  if (!tx_get_uint32(env, argv[5], "gcmSealInto: offset", &offset)) return NULL;
  size_t total = 0;
  for (uint32_t i = 0; i < count; i++) {
    napi_value el;
    napi_get_element(env, argv[3], i, &el);
    if (!buffer_arg(env, el, "gcmSealInto: parts must be Buffers", &parts[i])) return NULL;
    total += parts[i].len;
  }
  if (total > INT_MAX || aad.len > INT_MAX) return tx_throw(env, "gcmSealInto: part too large", EINVAL);
  if (offset > out.len || out.len - offset < total + GCM_TAG) {
    napi_throw_range_error(env, NULL, "gcmSealInto: the sealed bytes do not fit in out");
    return NULL;
  }
  if (!seal(&key, &nonce, &aad, parts, count, (uint8_t *)out.p + offset)) return tx_throw(env, "gcmSealInto: openssl", EIO);
  napi_value result;
  napi_create_double(env, (double)(total + GCM_TAG), &result);
  return result;
}

void tx_register_aead(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "gcmSealInto", gcm_seal_into);
}
