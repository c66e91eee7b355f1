// A growable byte buffer, the one the archive writer and the extractor share. Every append keeps a NUL
// after the data, so a buffer of text is also a C string.
#ifndef TETRIX_BYTES_H
#define TETRIX_BYTES_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *data;
  size_t len, cap;
} tx_bytes;

static inline bool tx_bytes_reserve(tx_bytes *b, size_t more) {
  if (b->len + more <= b->cap) return true;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + more) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) return false;
  b->data = p;
  b->cap = cap;
  return true;
}

static inline bool tx_bytes_append(tx_bytes *b, const void *p, size_t n) {
  if (!tx_bytes_reserve(b, n + 1)) return false;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
  return true;
}

static inline bool tx_bytes_zeros(tx_bytes *b, size_t n) {
  if (!tx_bytes_reserve(b, n + 1)) return false;
  memset(b->data + b->len, 0, n + 1);
  b->len += n;
  return true;
}

static inline bool tx_bytes_set(tx_bytes *b, const void *p, size_t n) {
  b->len = 0;
  return tx_bytes_append(b, p, n);
}

#endif
