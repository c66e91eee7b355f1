// The packed literal of a snapshot's tree stream (docs/backup-format.md, record 0x05). A tree's literal tar
// bytes are mostly zeros (ustar fields, pax headers and padding: ~1.5 KiB of every file's ~1.8 KiB), and
// every backup reads, sends, hashes and chunks its parent's tree and its own. Runs of zeros become counts:
// a 44k-file tree's literals go from 78 MiB to 16 MiB. In C because the scan is per byte.
//
// Body: pairs of (varint n, n literal bytes, varint z zero bytes) up to its end; a pair ends with z = 0
// only when it is the last one. Varints are LEB128, at most 5 bytes. The output is canonical (tree chunks
// dedupe across snapshots): zero runs of MIN_ZERO_RUN or more become counts, shorter ones stay literal.
#include <string.h>
#include "tetrix.h"

#define MIN_ZERO_RUN 8
// Packed never exceeds plain by more than this: each count pair saves at least what its varints cost,
// and the last pair adds at most two varints.
#define PACK_SLACK 10

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}

static size_t zero_run(const uint8_t *p, size_t n) {
  size_t i = 0;
  uint64_t w;
  while (i + 8 <= n && (memcpy(&w, p + i, 8), w == 0)) i += 8;
  while (i < n && p[i] == 0) i++;
  return i;
}

static size_t put_pair(uint8_t *dst, const uint8_t *lit, size_t lit_len, size_t zeros) {
  size_t out = put_varint(dst, lit_len);
  memcpy(dst + out, lit, lit_len);
  out += lit_len;
  return out + put_varint(dst + out, zeros);
}

static size_t pack(const uint8_t *src, size_t len, uint8_t *dst) {
  size_t out = 0, lit = 0, i = 0;  // lit: where the literal not yet written starts
  while (i < len) {
    const uint8_t *z = memchr(src + i, 0, len - i);
    if (!z) break;
    size_t at = (size_t)(z - src), run = zero_run(z, len - at);
    if (run >= MIN_ZERO_RUN) {
      out += put_pair(dst + out, src + lit, at - lit, run);
      lit = at + run;
    }
    i = at + run;
  }
  if (lit < len) out += put_pair(dst + out, src + lit, len - lit, 0);
  return out;
}

// A varint at src[*off..end) no larger than max; false when cut short, too long or too large.
static bool get_varint(const uint8_t *src, size_t end, size_t *off, size_t max, size_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift <= 28 && *off < end; shift += 7) {
    uint8_t b = src[(*off)++];
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      if (v > max) return false;
      *out = (size_t)v;
      return true;
    }
  }
  return false;
}

static bool unpack(const uint8_t *src, size_t len, uint8_t *dst, size_t plain) {
  size_t off = 0, pos = 0, n, z;
  while (off < len) {
    if (!get_varint(src, len, &off, plain - pos, &n) || n > len - off) return false;
    memcpy(dst + pos, src + off, n);
    off += n;
    pos += n;
    if (!get_varint(src, len, &off, plain - pos, &z)) return false;
    memset(dst + pos, 0, z);
    pos += z;
  }
  return pos == plain;
}

// buf[off..] (off NULL: 0) in *p and its length in *n; false after a TypeError `what`.
static bool get_tail(napi_env env, napi_value buf, napi_value off, const char *what, uint8_t **p, size_t *n) {
  void *data;
  size_t size;
  uint32_t o = 0;
  if (napi_get_buffer_info(env, buf, &data, &size) != napi_ok) return tx_type_error(env, what), false;
  if (off && !tx_get_uint32(env, off, what, &o)) return false;
  if (o > size) return tx_type_error(env, what), false;
  *p = (uint8_t *)data + o;
  *n = size - o;
  return true;
}

// buf[off..off+len) in *p and *n.
static bool get_range(napi_env env, napi_value buf, napi_value off, napi_value len, const char *what, uint8_t **p, size_t *n) {
  uint32_t l;
  if (!get_tail(env, buf, off, what, p, n) || !tx_get_uint32(env, len, what, &l)) return false;
  if (l > *n) return tx_type_error(env, what), false;
  *n = l;
  return true;
}

// treePack(src, srcOff, srcLen, dst, dstOff) -> bytes written at dst[dstOff..], which must have room for
// srcLen + constants.TREE_PACK_SLACK.
static napi_value js_tree_pack(napi_env env, napi_callback_info info) {
  size_t argc = 5, src_len, room;
  napi_value argv[5], r;
  uint8_t *src, *dst;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) return tx_type_error(env, "treePack(src, srcOff, srcLen, dst, dstOff)");
  if (!get_range(env, argv[0], argv[1], argv[2], "treePack: src range", &src, &src_len) ||
      !get_tail(env, argv[3], argv[4], "treePack: dst and dstOff", &dst, &room)) return NULL;
  if (room < src_len + PACK_SLACK) return tx_type_error(env, "treePack: dst has no room for srcLen + TREE_PACK_SLACK");
  napi_create_uint32(env, (uint32_t)pack(src, src_len, dst), &r);
  return r;
}

// treeUnpack(src, off, len, dst) -> true when src[off..off+len) unpacks to exactly dst's length.
static napi_value js_tree_unpack(napi_env env, napi_callback_info info) {
  size_t argc = 4, src_len, dst_len;
  napi_value argv[4], r;
  uint8_t *src, *dst;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4) return tx_type_error(env, "treeUnpack(src, off, len, dst)");
  if (!get_range(env, argv[0], argv[1], argv[2], "treeUnpack: src range", &src, &src_len) ||
      !get_tail(env, argv[3], NULL, "treeUnpack: dst must be a Buffer", &dst, &dst_len)) return NULL;
  napi_get_boolean(env, unpack(src, src_len, dst, dst_len), &r);
  return r;
}

void tx_register_tree_pack(napi_env env, napi_value addon, napi_value constants) {
  tx_set_function(env, addon, "treePack", js_tree_pack);
  tx_set_function(env, addon, "treeUnpack", js_tree_unpack);
  napi_value slack;
  napi_create_uint32(env, PACK_SLACK, &slack);
  napi_set_named_property(env, constants, "TREE_PACK_SLACK", slack);
}
