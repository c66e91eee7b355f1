// Content-defined chunking for the repository format (docs/backup-format.md, "Repository format"): FastCDC
// (Xia et al., USENIX ATC 2016) with normalized chunking. The gear table comes from the caller, derived from
// the repository's secret, so where a chunk ends says nothing an observer could compute from the content.
// Chosen over a TypeScript loop by measurement (docs/backup-format.md).
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

// The gear hash shifts one bit per byte, so its top bits depend on the last 64 bytes only: a scan can
// resume at any offset by rehashing the 64 bytes before it, and no state needs to cross calls.
static size_t fastcdc_cut(const uint64_t *gear, const uint8_t *p, size_t from, size_t len, size_t min, size_t normal,
                          size_t max, uint64_t mask_small, uint64_t mask_large, int *found) {
  *found = 0;
  if (len > max) len = max;
  size_t start = from < min ? min : from;
  if (start >= len) {
    if (len == max) *found = 1;
    return len;
  }
  uint64_t h = 0;
  for (size_t i = start >= 64 ? start - 64 : 0; i < start; i++) h = (h << 1) + gear[p[i]];
  size_t i = start;
  for (size_t end = normal < len ? normal : len; i < end; i++) {
    h = (h << 1) + gear[p[i]];
    if (!(h & mask_small)) { *found = 1; return i + 1; }
  }
  for (; i < len; i++) {
    h = (h << 1) + gear[p[i]];
    if (!(h & mask_large)) { *found = 1; return i + 1; }
  }
  if (len == max) *found = 1;
  return len;
}

// Top `bits` bits set: they depend on the whole 64-byte window, the low ones only on the last few bytes.
static uint64_t top_mask(uint32_t bits) {
  return bits == 0 ? 0 : ~(uint64_t)0 << (64 - bits);
}

// chunkerCut(gear: Buffer(2048), buf: Buffer, from, len, min, normal, max, bitsSmall, bitsLarge) -> number
// The length of the first chunk of buf[0..len) (scanning resumes at `from`), or -(len) when no boundary was
// found before len and len < max: the caller appends more data and asks again.
static napi_value chunker_cut(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 9) return tx_type_error(env, "chunkerCut: 9 arguments");
  void *gear = NULL, *data = NULL;
  size_t gear_len = 0, data_len = 0;
  if (napi_get_buffer_info(env, argv[0], &gear, &gear_len) != napi_ok || gear_len != 256 * 8)
    return tx_type_error(env, "chunkerCut: gear must be a 2048-byte Buffer");
  if (napi_get_buffer_info(env, argv[1], &data, &data_len) != napi_ok)
    return tx_type_error(env, "chunkerCut: buf must be a Buffer");
  uint32_t v[7];
  static const char *names[7] = {"from", "len", "min", "normal", "max", "bitsSmall", "bitsLarge"};
  for (int k = 0; k < 7; k++) {
    char what[48];
    snprintf(what, sizeof what, "chunkerCut: %s", names[k]);
    if (!tx_get_uint32(env, argv[2 + k], what, &v[k])) return NULL;
  }
  if (v[1] > data_len || v[0] > v[1] || v[2] > v[3] || v[3] > v[4] || v[4] == 0 || v[5] > 63 || v[6] > 63)
    return tx_throw(env, "chunkerCut: arguments out of range", EINVAL);
  uint64_t table[256];
  memcpy(table, gear, sizeof table);  // the Buffer may be unaligned
  int found;
  size_t cut = fastcdc_cut(table, data, v[0], v[1], v[2], v[3], v[4], top_mask(v[5]), top_mask(v[6]), &found);
  napi_value out;
  napi_create_double(env, found ? (double)cut : -(double)cut, &out);
  return out;
}

void tx_register_chunker(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "chunkerCut", chunker_cut);
}
