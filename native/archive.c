// The hot loop of a backup: walk one tree and write its pax tar stream (docs/backup-format.md) into the
// caller's buffer, in C, so that a backup costs about what `tar -c` costs (src/content/tree-walk.ts drives it).
//
// Every name is opened relative to a directory fd the walk holds (openat with O_NOFOLLOW, a single
// component from getdents64), and what was opened is checked with fstat: a workload that swaps a directory
// for a symlink mid-walk cannot make this read a host file. Synchronous: the archive-runner child calls it,
// one output buffer at a time, never the daemon's event loop.
//
// What stays in TypeScript: the xattr policy (src/content/xattrs.ts). When an entry carries xattrs other
// than those the policy drops quietly, the walk stops with status "xattrs" and the entry's fd; the caller
// decides what the archive keeps and hands the records back with archiveWalkResume().
#define _GNU_SOURCE
#include "bytes.h"
#include "tetrix.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MAX_OCTAL_8 07777777ULL
#define MAX_OCTAL_12 077777777777ULL
#define OVERFLOW_ID 65534
#define DENTS_BUF (64 * 1024)
#define XATTR_LIST_MAX_BYTES 65536

// ---------------------------------------------------------------------------------------------------
// Header encoding: the pax/ustar subset of docs/backup-format.md (test/helpers/tar-oracle.ts reads it independently).

typedef struct {
  char flag;                 // '0' file, '1' hard link, '2' symlink, '3' char device, '5' directory
  const char *path;          // archive path (directories without the trailing slash)
  size_t path_len;
  const char *linkpath;      // "" when none
  size_t link_len;
  uint32_t mode, uid, gid;   // container ids
  uint64_t size;
  struct timespec mtime;
  int64_t metacopy_size;     // -1: none
  napi_env env;              // with xattrs: the array of [name, Buffer] pairs, else NULL
  napi_value xattrs;
} entry_header;

static bool is_ascii(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] == 0 || (unsigned char)s[i] > 0x7f) return false;
  return true;
}

static void write_octal(char *buf, uint64_t value, size_t len) {
  char tmp[32];
  snprintf(tmp, sizeof tmp, "%0*llo", (int)(len - 1), (unsigned long long)value);
  memcpy(buf, tmp, len - 1);
  buf[len - 1] = 0;
}

static void ustar_block(char *b, const char *name, size_t name_len, const char *prefix, size_t prefix_len,
                        uint32_t mode, uint64_t uid, uint64_t gid, uint64_t size, uint64_t mtime, char flag,
                        const char *link, size_t link_len) {
  memset(b, 0, TAR_BLOCK);
  memcpy(b, name, name_len > 100 ? 100 : name_len);
  write_octal(b + 100, mode, 8);
  write_octal(b + 108, uid, 8);
  write_octal(b + 116, gid, 8);
  write_octal(b + 124, size, 12);
  write_octal(b + 136, mtime, 12);
  b[156] = flag;
  memcpy(b + 157, link, link_len > 100 ? 100 : link_len);
  memcpy(b + 257, "ustar\0" "00", 8);
  write_octal(b + 329, 0, 8);
  write_octal(b + 337, 0, 8);
  memcpy(b + 345, prefix, prefix_len > 155 ? 155 : prefix_len);
  memset(b + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < TAR_BLOCK; i++) sum += (unsigned char)b[i];
  write_octal(b + 148, sum, 8);
}

// "<len> <key>=<value>\n", len counting every byte of the record, its own digits included.
static bool pax_record(tx_bytes *out, const char *key, size_t key_len, const char *key2, size_t key2_len,
                       const void *value, size_t value_len) {
  size_t rest = 1 + key_len + key2_len + 1 + value_len + 1;
  size_t len = rest + 1;
  char digits[24];
  for (;;) {
    int d = snprintf(digits, sizeof digits, "%zu", len);
    if ((size_t)d + rest == len) break;
    len = (size_t)d + rest;
  }
  if (!tx_bytes_reserve(out, len)) return false;
  tx_bytes_append(out, digits, strlen(digits));
  tx_bytes_append(out, " ", 1);
  tx_bytes_append(out, key, key_len);
  tx_bytes_append(out, key2, key2_len);
  tx_bytes_append(out, "=", 1);
  tx_bytes_append(out, value, value_len);
  tx_bytes_append(out, "\n", 1);
  return true;
}

// ustar's name/prefix split at a '/', when the name is ASCII and fits.
static bool split_ustar_name(const char *name, size_t n, size_t *prefix_len) {
  if (!is_ascii(name, n)) return false;
  if (n <= 100) {
    *prefix_len = 0;
    return true;
  }
  for (size_t i = 0; i < n && i <= 155; i++) {
    if (name[i] != '/') continue;
    size_t rest = n - i - 1;
    if (rest <= 100 && rest > 0) {
      *prefix_len = i;
      return true;
    }
  }
  return false;
}

// Appends the entry's header blocks (a pax extended header first when needed) to out. errno on failure.
static int encode_entry(tx_bytes *out, const entry_header *h, tx_bytes *scratch) {
  // The full name, with the trailing slash directories carry, built in the scratch buffer.
  scratch->len = 0;
  if (!tx_bytes_reserve(scratch, h->path_len + 2)) return ENOMEM;
  tx_bytes_append(scratch, h->path, h->path_len);
  if (h->flag == '5' && (h->path_len == 0 || h->path[h->path_len - 1] != '/')) tx_bytes_append(scratch, "/", 1);
  char *full = scratch->data;
  size_t n = scratch->len;

  tx_bytes pax = {0};
  size_t prefix_len = 0;
  bool split = split_ustar_name(full, n, &prefix_len);
  bool ok = true;
  if (!split) ok = ok && pax_record(&pax, "path", 4, "", 0, full, n);
  bool link_in_pax = h->link_len > 0 && (h->link_len > 100 || !is_ascii(h->linkpath, h->link_len));
  if (link_in_pax) ok = ok && pax_record(&pax, "linkpath", 8, "", 0, h->linkpath, h->link_len);
  char num[64];
  if (h->uid > MAX_OCTAL_8) ok = ok && pax_record(&pax, "uid", 3, "", 0, num, (size_t)snprintf(num, sizeof num, "%u", h->uid));
  if (h->gid > MAX_OCTAL_8) ok = ok && pax_record(&pax, "gid", 3, "", 0, num, (size_t)snprintf(num, sizeof num, "%u", h->gid));
  if (h->size > MAX_OCTAL_12) ok = ok && pax_record(&pax, "size", 4, "", 0, num, (size_t)snprintf(num, sizeof num, "%llu", (unsigned long long)h->size));
  uint64_t secs = h->mtime.tv_sec >= 0 ? (uint64_t)h->mtime.tv_sec : 0;
  uint64_t frac = h->mtime.tv_sec >= 0 ? (uint64_t)h->mtime.tv_nsec : 0;
  if (frac != 0 || secs > MAX_OCTAL_12) {
    ok = ok && pax_record(&pax, "mtime", 5, "", 0, num, (size_t)snprintf(num, sizeof num, "%llu.%09llu",
                                                                          (unsigned long long)secs, (unsigned long long)frac));
  }
  if (h->metacopy_size >= 0) {
    ok = ok && pax_record(&pax, "TETRIX.metacopy.size", 20, "", 0, num,
                          (size_t)snprintf(num, sizeof num, "%lld", (long long)h->metacopy_size));
  }
  if (h->xattrs) {
    uint32_t count = 0;
    napi_get_array_length(h->env, h->xattrs, &count);
    for (uint32_t i = 0; ok && i < count; i++) {
      napi_value pair, k, v;
      char key[256];
      size_t key_len = 0, value_len = 0;
      void *value = NULL;
      napi_get_element(h->env, h->xattrs, i, &pair);
      napi_get_element(h->env, pair, 0, &k);
      napi_get_element(h->env, pair, 1, &v);
      if (napi_get_value_string_utf8(h->env, k, key, sizeof key, &key_len) != napi_ok ||
          napi_get_buffer_info(h->env, v, &value, &value_len) != napi_ok) {
        free(pax.data);
        return EINVAL;
      }
      ok = pax_record(&pax, "SCHILY.xattr.", 13, key, key_len, value, value_len);
    }
  }
  if (!ok) {
    free(pax.data);
    return ENOMEM;
  }

  char block[TAR_BLOCK];
  if (pax.len > 0) {
    char pname[100];
    const char *short_name = split ? full + (prefix_len ? prefix_len + 1 : 0) : "entry";
    size_t short_len = split ? n - (prefix_len ? prefix_len + 1 : 0) : 5;
    if (short_len > 80) short_len = 80;
    memcpy(pname, "PaxHeaders/", 11);
    memcpy(pname + 11, short_name, short_len);
    ustar_block(block, pname, 11 + short_len, "", 0, 0644, 0, 0, pax.len, 0, 'x', "", 0);
    size_t pad = (TAR_BLOCK - pax.len % TAR_BLOCK) % TAR_BLOCK;
    ok = tx_bytes_append(out, block, TAR_BLOCK) && tx_bytes_append(out, pax.data, pax.len) && tx_bytes_zeros(out, pad);
    free(pax.data);
    if (!ok) return ENOMEM;
  }
  const char *uname = full;
  size_t uname_len = n;
  const char *prefix = "";
  if (split && prefix_len) {
    prefix = full;
    uname = full + prefix_len + 1;
    uname_len = n - prefix_len - 1;
  } else if (!split) {
    // Informational only (the pax path wins): the last 100 bytes, without leading slashes.
    uname = full + (n > 100 ? n - 100 : 0);
    uname_len = n > 100 ? 100 : n;
    while (uname_len && *uname == '/') uname++, uname_len--;
  }
  ustar_block(block, uname, uname_len, prefix, split ? prefix_len : 0, h->mode & 07777,
              h->uid > MAX_OCTAL_8 ? MAX_OCTAL_8 : h->uid, h->gid > MAX_OCTAL_8 ? MAX_OCTAL_8 : h->gid,
              h->size > MAX_OCTAL_12 ? 0 : h->size, secs > MAX_OCTAL_12 ? 0 : secs, h->flag,
              link_in_pax ? "" : h->linkpath, link_in_pax ? 0 : h->link_len);
  return tx_bytes_append(out, block, TAR_BLOCK) ? 0 : ENOMEM;
}

// ---------------------------------------------------------------------------------------------------
// Hard links: (dev, ino) -> archive path of the first occurrence, an open-addressing table.

typedef struct {
  dev_t dev;
  ino_t ino;
  char *path;  // NULL: empty slot
} link_slot;

typedef struct {
  link_slot *slots;
  size_t cap, count;
} link_table;

static size_t link_hash(dev_t dev, ino_t ino, size_t cap) {
  uint64_t h = ((uint64_t)dev * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)ino * 0xc2b2ae3d27d4eb4fULL);
  return (size_t)(h ^ (h >> 29)) & (cap - 1);
}

static link_slot *link_find(link_table *t, dev_t dev, ino_t ino) {
  if (!t->cap) return NULL;
  for (size_t i = link_hash(dev, ino, t->cap);; i = (i + 1) & (t->cap - 1)) {
    link_slot *s = &t->slots[i];
    if (!s->path || (s->dev == dev && s->ino == ino)) return s;
  }
}

static bool link_add(link_table *t, dev_t dev, ino_t ino, const char *path, size_t len) {
  if ((t->count + 1) * 2 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 256;
    link_slot *old = t->slots;
    size_t old_cap = t->cap;
    t->slots = calloc(cap, sizeof *t->slots);
    if (!t->slots) {
      t->slots = old;
      return false;
    }
    t->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
      if (old[i].path) *link_find(t, old[i].dev, old[i].ino) = old[i];
    free(old);
  }
  link_slot *s = link_find(t, dev, ino);
  s->path = strndup(path, len);
  if (!s->path) return false;
  s->dev = dev;
  s->ino = ino;
  t->count++;
  return true;
}

static void link_free(link_table *t) {
  for (size_t i = 0; i < t->cap; i++) free(t->slots[i].path);
  free(t->slots);
  t->slots = NULL;
  t->cap = t->count = 0;
}

// ---------------------------------------------------------------------------------------------------
// The walk

typedef struct {
  uint32_t name;      // offset into names
  unsigned char type; // d_type
} dir_entry;

typedef struct {
  int fd;
  size_t path_len;    // length of this directory's archive path in walker.path
  char *names;
  dir_entry *entries;
  size_t count, next;
} dir_frame;

typedef enum { PENDING_NONE, PENDING_FILE, PENDING_DIR } pending_kind;

typedef struct {
  char *root_name;
  uint32_t uid_base, id_count;
  bool upper;
  char **quiet;       // xattr names the policy drops without a report (from xattrs.ts)
  size_t quiet_count;

  dir_frame *stack;
  size_t depth, stack_cap;
  tx_bytes path;         // archive path of the entry at hand: "<root>/<rel>"
  tx_bytes header;       // header and padding bytes not yet copied out
  size_t header_off;
  tx_bytes scratch;

  int file_fd;        // file whose data is being copied, or -1
  uint64_t file_remaining, file_size;
  bool file_shrank;
  // Snapshots (src/content/repo/): stop before each regular file's data, so the caller may reuse the
  // chunks of an unchanged file (archiveWalkSkipFile) instead of reading it. file_id is its fstat identity.
  bool pause_files, file_paused;
  struct stat file_st;

  // An entry stopped for the xattr policy: its fd (owned here), stat and path.
  pending_kind pending;
  int pending_fd;
  struct stat pending_st;
  size_t pending_path_len;

  link_table links;
  bool started, done;
  double files, bytes_done;
  tx_bytes skips;        // "<rel>\0<why>\0" pairs, drained by each fill
} walker;

static void frame_free(dir_frame *f) {
  if (f->fd >= 0) close(f->fd);
  free(f->names);
  free(f->entries);
}

static void walker_free(walker *w) {
  for (size_t i = 0; i < w->depth; i++) frame_free(&w->stack[i]);
  free(w->stack);
  if (w->file_fd >= 0) close(w->file_fd);
  // A pending directory's fd belongs to its frame; before the first fill, pending_fd is the root.
  if (w->pending_fd >= 0 && (w->pending == PENDING_FILE || !w->started)) close(w->pending_fd);
  free(w->path.data);
  free(w->header.data);
  free(w->scratch.data);
  free(w->skips.data);
  link_free(&w->links);
  for (size_t i = 0; i < w->quiet_count; i++) free(w->quiet[i]);
  free(w->quiet);
  free(w->root_name);
  free(w);
}

static uint32_t to_container_id(const walker *w, uint32_t host) {
  uint64_t id = (uint64_t)host - w->uid_base;
  return host >= w->uid_base && id < w->id_count ? (uint32_t)id : OVERFLOW_ID;
}

// The relative path (below the root) of the entry at hand, for reports.
static const char *rel_of(const walker *w, size_t path_len, size_t *rel_len) {
  size_t root = strlen(w->root_name);
  if (path_len <= root) {
    *rel_len = 0;
    return "";
  }
  *rel_len = path_len - root - 1;
  return w->path.data + root + 1;
}

static void skip(walker *w, size_t path_len, const char *why) {
  size_t rel_len;
  const char *rel = rel_of(w, path_len, &rel_len);
  // Out of memory loses the report, not the backup.
  (void)(tx_bytes_append(&w->skips, rel, rel_len) && tx_bytes_append(&w->skips, "", 1) &&
         tx_bytes_append(&w->skips, why, strlen(why) + 1));
}

static int cmp_entries(const void *a, const void *b, void *names) {
  return strcmp((char *)names + ((const dir_entry *)a)->name, (char *)names + ((const dir_entry *)b)->name);
}

// Reads and sorts a directory's entries (getdents64: one call per 64 KiB of names).
static int read_entries(dir_frame *f) {
  char *buf = malloc(DENTS_BUF);
  tx_bytes names = {0};
  size_t cap = 0;
  int err = 0;
  if (!buf) return ENOMEM;
  for (;;) {
    ssize_t n = getdents64(f->fd, buf, DENTS_BUF);
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      struct dirent64 *d = (struct dirent64 *)(buf + off);
      off += d->d_reclen;
      if (!strcmp(d->d_name, ".") || !strcmp(d->d_name, "..")) continue;
      if (f->count == cap) {
        cap = cap ? cap * 2 : 64;
        dir_entry *e = realloc(f->entries, cap * sizeof *e);
        if (!e) {
          err = ENOMEM;
          goto out;
        }
        f->entries = e;
      }
      f->entries[f->count].name = (uint32_t)names.len;
      f->entries[f->count].type = d->d_type;
      if (!tx_bytes_append(&names, d->d_name, strlen(d->d_name) + 1)) {
        err = ENOMEM;
        goto out;
      }
      f->count++;
    }
  }
out:
  free(buf);
  f->names = names.data;
  if (!err && f->count > 1) qsort_r(f->entries, f->count, sizeof *f->entries, cmp_entries, f->names);
  return err;
}

static bool path_push(walker *w, size_t parent_len, const char *name) {
  w->path.len = parent_len;
  size_t n = strlen(name);
  return tx_bytes_append(&w->path, "/", 1) && tx_bytes_append(&w->path, name, n);
}

static int emit(walker *w, char flag, const struct stat *st, uint64_t size, const char *link, size_t link_len,
                int64_t metacopy, napi_env env, napi_value xattrs) {
  entry_header h = {
    .flag = flag, .path = w->path.data, .path_len = w->path.len, .linkpath = link ? link : "",
    .link_len = link ? link_len : 0, .mode = st->st_mode & 07777, .uid = to_container_id(w, st->st_uid),
    .gid = to_container_id(w, st->st_gid), .size = size, .mtime = st->st_mtim, .metacopy_size = metacopy,
    .env = env, .xattrs = xattrs,
  };
  int err = encode_entry(&w->header, &h, &w->scratch);
  if (!err && flag != '0') w->files++;  // a file counts once its data is out
  return err;
}

// True when the fd has xattrs the policy might keep (anything not on the quiet list).
static int has_policy_xattrs(walker *w, int fd, bool *out) {
  char small[512];
  char *buf = small;
  ssize_t n = flistxattr(fd, buf, sizeof small);
  if (n < 0 && errno == ERANGE) {
    buf = malloc(XATTR_LIST_MAX_BYTES);
    if (!buf) return ENOMEM;
    n = flistxattr(fd, buf, XATTR_LIST_MAX_BYTES);
  }
  int err = n < 0 && errno != ENOTSUP ? errno : 0;
  *out = false;
  for (ssize_t off = 0; off < n && !*out;) {
    const char *name = buf + off;
    off += (ssize_t)strnlen(name, (size_t)(n - off)) + 1;
    bool quiet = false;
    for (size_t i = 0; i < w->quiet_count && !quiet; i++) quiet = !strcmp(name, w->quiet[i]);
    if (!quiet) *out = true;
  }
  if (buf != small) free(buf);
  return err;
}

static int start_file_data(walker *w, int fd, const struct stat *st, napi_env env, napi_value xattrs, bool metacopy) {
  if (metacopy) {
    // Metadata only: overlayfs reads the data from the image; the upper file is a hole of that size.
    int err = emit(w, '0', st, 0, NULL, 0, st->st_size, env, xattrs);
    close(fd);
    w->files++;
    return err;
  }
  int err = emit(w, '0', st, (uint64_t)st->st_size, NULL, 0, -1, env, xattrs);
  if (err) {
    close(fd);
    return err;
  }
  w->file_fd = fd;
  w->file_size = w->file_remaining = (uint64_t)st->st_size;
  w->file_shrank = false;
  w->file_paused = w->pause_files && st->st_size > 0;
  w->file_st = *st;
  w->pending_path_len = w->path.len;
  if (st->st_size == 0) {
    close(fd);
    w->file_fd = -1;
    w->files++;
  }
  return 0;
}

static int push_dir(walker *w, int fd, size_t path_len, bool *stopped) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return err;
  }
  if (w->depth == w->stack_cap) {
    size_t cap = w->stack_cap ? w->stack_cap * 2 : 32;
    dir_frame *s = realloc(w->stack, cap * sizeof *s);
    if (!s) {
      close(fd);
      return ENOMEM;
    }
    w->stack = s;
    w->stack_cap = cap;
  }
  dir_frame *f = &w->stack[w->depth++];
  memset(f, 0, sizeof *f);
  f->fd = fd;
  f->path_len = path_len;
  int err = read_entries(f);
  if (err) return err;
  bool xattrs;
  if ((err = has_policy_xattrs(w, fd, &xattrs))) return err;
  if (xattrs) {
    w->pending = PENDING_DIR;
    w->pending_fd = fd;
    w->pending_st = st;
    w->pending_path_len = path_len;
    *stopped = true;
    return 0;
  }
  return emit(w, '5', &st, 0, NULL, 0, -1, NULL, NULL);
}

static int visit_dir(walker *w, int parent, const char *name, size_t path_len, bool *stopped) {
  int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) return skip(w, path_len, "changed during backup"), 0;
    return errno;
  }
  return push_dir(w, fd, path_len, stopped);
}

static int visit_file(walker *w, int parent, const char *name, size_t path_len, bool *stopped) {
  int fd = openat(parent, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ELOOP) return skip(w, path_len, "changed during backup"), 0;
    return errno;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return err;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return skip(w, path_len, "changed during backup"), 0;
  }
  if (st.st_nlink > 1) {
    link_slot *first = link_find(&w->links, st.st_dev, st.st_ino);
    if (first && first->path) {
      close(fd);
      return emit(w, '1', &st, 0, first->path, strlen(first->path), -1, NULL, NULL);
    }
    if (!link_add(&w->links, st.st_dev, st.st_ino, w->path.data, w->path.len)) {
      close(fd);
      return ENOMEM;
    }
  }
  bool xattrs;
  int err = has_policy_xattrs(w, fd, &xattrs);
  if (err) {
    close(fd);
    return err;
  }
  if (xattrs) {
    w->pending = PENDING_FILE;
    w->pending_fd = fd;
    w->pending_st = st;
    w->pending_path_len = path_len;
    *stopped = true;
    return 0;
  }
  return start_file_data(w, fd, &st, NULL, NULL, false);
}

// The lexical containment rule of src/content/archive.ts symlinkEscapes().
static bool symlink_escapes(const char *rel, size_t rel_len, const char *target) {
  if (target[0] == 0 || target[0] == '/') return true;
  long depth = 0;
  for (size_t i = 0; i < rel_len; i++) depth += rel[i] == '/';
  for (const char *p = target; *p;) {
    const char *end = strchrnul(p, '/');
    size_t n = (size_t)(end - p);
    if (n == 2 && p[0] == '.' && p[1] == '.') {
      if (--depth < 0) return true;
    } else if (n > 0 && !(n == 1 && p[0] == '.')) {
      depth++;
    }
    p = *end ? end + 1 : end;
  }
  return false;
}

typedef struct {
  char *message;  // a refusal (FAILED_PRECONDITION), malloc'd
} refusal;

static int visit_other(walker *w, int parent, const char *name, size_t path_len, bool *stopped, refusal *refused) {
  struct stat st;
  if (fstatat(parent, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return skip(w, path_len, "vanished during backup"), 0;
    return errno;
  }
  if (S_ISDIR(st.st_mode)) return visit_dir(w, parent, name, path_len, stopped);
  if (S_ISREG(st.st_mode)) return visit_file(w, parent, name, path_len, stopped);
  if (S_ISLNK(st.st_mode)) {
    char target[4097];
    ssize_t n = readlinkat(parent, name, target, sizeof target - 1);
    if (n < 0) {
      if (errno == ENOENT || errno == EINVAL) return skip(w, path_len, "changed during backup"), 0;
      return errno;
    }
    target[n] = 0;
    size_t rel_len;
    const char *rel = rel_of(w, path_len, &rel_len);
    if ((size_t)n != strlen(target) || symlink_escapes(rel, rel_len, target)) {
      if (asprintf(&refused->message, "%.*s: symlink points outside the %s root; restore would refuse it",
                   (int)path_len, w->path.data, w->root_name) < 0) {
        refused->message = NULL;
        return ENOMEM;
      }
      return 0;
    }
    return emit(w, '2', &st, 0, target, (size_t)n, -1, NULL, NULL);
  }
  if (S_ISCHR(st.st_mode) && st.st_rdev == 0) {
    // An overlayfs whiteout: a file deleted from the image. It means nothing outside an upper layer,
    // and restore refuses it there.
    if (w->upper) return emit(w, '3', &st, 0, NULL, 0, -1, NULL, NULL);
    return skip(w, path_len, "whiteout (0/0 device) outside the overlay upper layer"), 0;
  }
  skip(w, path_len, S_ISFIFO(st.st_mode) ? "FIFO" : S_ISSOCK(st.st_mode) ? "socket" : "device node");
  return 0;
}

// One step of the walk: the next entry of the deepest directory, or the end of that directory.
static int walk_step(walker *w, bool *stopped, refusal *refused) {
  if (w->depth == 0) {
    w->done = true;
    return 0;
  }
  dir_frame *f = &w->stack[w->depth - 1];
  if (f->next >= f->count) {
    frame_free(f);
    w->depth--;
    return 0;
  }
  dir_entry *e = &f->entries[f->next++];
  const char *name = f->names + e->name;
  if (!path_push(w, f->path_len, name)) return ENOMEM;
  size_t path_len = w->path.len;
  switch (e->type) {
    case DT_DIR: return visit_dir(w, f->fd, name, path_len, stopped);
    case DT_REG: return visit_file(w, f->fd, name, path_len, stopped);
    default: return visit_other(w, f->fd, name, path_len, stopped, refused);
  }
}

// Copies file data straight into out; a file that shrank is zero-padded to the size its header announced.
static int copy_file_data(walker *w, char *out, size_t space, size_t *wrote) {
  size_t want = w->file_remaining < space ? (size_t)w->file_remaining : space;
  ssize_t n = 0;
  if (!w->file_shrank) {
    do n = read(w->file_fd, out, want);
    while (n < 0 && errno == EINTR);
    if (n < 0) return errno;
    if (n == 0) {
      w->file_shrank = true;
      skip(w, w->pending_path_len, "shrank during backup; zero-padded");
    }
  }
  if (w->file_shrank) {
    memset(out, 0, want);
    n = (ssize_t)want;
  }
  *wrote = (size_t)n;
  w->file_remaining -= (uint64_t)n;
  if (w->file_remaining == 0) {
    close(w->file_fd);
    w->file_fd = -1;
    w->files++;
    w->bytes_done += (double)w->file_size;
    size_t pad = (TAR_BLOCK - w->file_size % TAR_BLOCK) % TAR_BLOCK;
    if (!tx_bytes_zeros(&w->header, pad)) return ENOMEM;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// JS surface

static void finalize_walker(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  if (data) walker_free(data);
}

static walker *get_walker(napi_env env, napi_value v) {
  return tx_get_external(env, v, "walker: not an archive walk (or already closed)");
}

// archiveWalkStart(rootFd, rootName, uidBase, idCount, upper, quietXattrs) -> walker. rootFd is duplicated.
static napi_value js_walk_start(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6], result;
  int32_t root_fd;
  uint32_t uid_base, id_count, quiet_count = 0;
  bool upper = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6) return tx_type_error(env, "archiveWalkStart(rootFd, rootName, uidBase, idCount, upper, quietXattrs)");
  walker *w = calloc(1, sizeof *w);
  if (!w) return tx_throw(env, "malloc", ENOMEM);
  w->file_fd = -1;
  w->pending_fd = -1;
  if (!tx_get_int32(env, argv[0], "archiveWalkStart: rootFd", &root_fd) ||
      !tx_get_string(env, argv[1], "archiveWalkStart: rootName", &w->root_name) ||
      !tx_get_uint32(env, argv[2], "archiveWalkStart: uidBase", &uid_base) ||
      !tx_get_uint32(env, argv[3], "archiveWalkStart: idCount", &id_count)) {
    walker_free(w);
    return NULL;
  }
  if (napi_get_value_bool(env, argv[4], &upper) != napi_ok || napi_get_array_length(env, argv[5], &quiet_count) != napi_ok) {
    walker_free(w);
    return tx_type_error(env, "archiveWalkStart: upper must be a boolean and quietXattrs an array");
  }
  w->uid_base = uid_base;
  w->id_count = id_count;
  w->upper = upper;
  w->quiet = calloc(quiet_count ? quiet_count : 1, sizeof *w->quiet);
  if (!w->quiet) {
    walker_free(w);
    return tx_throw(env, "malloc", ENOMEM);
  }
  for (uint32_t i = 0; w->quiet && i < quiet_count; i++) {
    napi_value v;
    napi_get_element(env, argv[5], i, &v);
    if (!tx_get_string(env, v, "archiveWalkStart: quietXattrs", &w->quiet[i])) {
      w->quiet_count = i;
      walker_free(w);
      return NULL;
    }
    w->quiet_count = i + 1;
  }
  int fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) {
    int err = errno;
    walker_free(w);
    return tx_throw(env, "archiveWalkStart: dup root fd", err);
  }
  if (!tx_bytes_append(&w->path, w->root_name, strlen(w->root_name))) {
    close(fd);
    walker_free(w);
    return tx_throw(env, "malloc", ENOMEM);
  }
  w->pending_fd = fd;  // the root, pushed by the first fill
  napi_create_external(env, w, finalize_walker, NULL, &result);
  return result;
}

static void set_number(napi_env env, napi_value obj, const char *name, double v) {
  napi_value n;
  napi_create_double(env, v, &n);
  napi_set_named_property(env, obj, name, n);
}

static void set_string(napi_env env, napi_value obj, const char *name, const char *s, size_t len) {
  napi_value v;
  napi_create_string_utf8(env, s, len, &v);
  napi_set_named_property(env, obj, name, v);
}

// The result of a fill: { length, status: 'full'|'done'|'xattrs'|'refused', files, bytes, skips?, ... }.
static napi_value fill_result(napi_env env, walker *w, size_t length, const char *status) {
  napi_value r;
  napi_create_object(env, &r);
  set_number(env, r, "length", (double)length);
  set_string(env, r, "status", status, NAPI_AUTO_LENGTH);
  set_number(env, r, "files", w->files);
  set_number(env, r, "bytes", w->bytes_done);
  if (w->skips.len) {
    napi_value list;
    napi_create_array(env, &list);
    uint32_t i = 0;
    for (size_t off = 0; off < w->skips.len;) {
      const char *rel = w->skips.data + off;
      off += strlen(rel) + 1;
      const char *why = w->skips.data + off;
      off += strlen(why) + 1;
      napi_value pair, a, b;
      napi_create_array_with_length(env, 2, &pair);
      napi_create_string_utf8(env, rel, NAPI_AUTO_LENGTH, &a);
      napi_create_string_utf8(env, why, NAPI_AUTO_LENGTH, &b);
      napi_set_element(env, pair, 0, a);
      napi_set_element(env, pair, 1, b);
      napi_set_element(env, list, i++, pair);
    }
    napi_set_named_property(env, r, "skips", list);
    w->skips.len = 0;
  }
  return r;
}

static napi_value throw_walk(napi_env env, walker *w, const char *what, int err) {
  char step[512];
  size_t rel_len;
  const char *rel = rel_of(w, w->path.len, &rel_len);
  snprintf(step, sizeof step, "archive walk: %s %.*s", what, (int)(rel_len > 300 ? 300 : rel_len), rel);
  return tx_throw(env, step, err);
}

// archiveWalkFill(walker, buf, offset) -> result. Writes tar bytes into buf[offset..] until it is full, the
// tree is done, or an entry waits for the xattr policy.
static napi_value js_walk_fill(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t offset;
  char *buf;
  size_t len;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) return tx_type_error(env, "archiveWalkFill(walker, buf, offset)");
  walker *w = get_walker(env, argv[0]);
  if (!w) return NULL;
  if (napi_get_buffer_info(env, argv[1], (void **)&buf, &len) != napi_ok)
    return tx_type_error(env, "archiveWalkFill: buf must be a Buffer");
  if (!tx_get_uint32(env, argv[2], "archiveWalkFill: offset", &offset)) return NULL;
  if (offset > len) return tx_type_error(env, "archiveWalkFill: offset beyond the buffer");
  if (w->pending != PENDING_NONE) return tx_type_error(env, "archiveWalkFill: an entry waits for archiveWalkResume");

  size_t pos = offset;
  int err = 0;
  if (!w->started) {
    w->started = true;
    bool stopped = false;
    int fd = w->pending_fd;
    w->pending_fd = -1;
    err = push_dir(w, fd, w->path.len, &stopped);
    if (err) return throw_walk(env, w, "root", err);
    if (stopped) return fill_result(env, w, 0, "xattrs");
  }
  while (pos < len) {
    if (w->header_off < w->header.len) {
      size_t n = w->header.len - w->header_off;
      if (n > len - pos) n = len - pos;
      memcpy(buf + pos, w->header.data + w->header_off, n);
      pos += n;
      w->header_off += n;
      if (w->header_off == w->header.len) w->header.len = w->header_off = 0;
      continue;
    }
    if (w->file_fd >= 0 && w->file_paused) {
      // The header is out; the data waits for archiveWalkSkipFile or the next fill.
      w->file_paused = false;
      napi_value r = fill_result(env, w, pos - offset, "file");
      // dev:ino:size:mtime:ctime, as restic's file-change test; from the fstat the data will be read after.
      char id[160];
      snprintf(id, sizeof id, "%llu:%llu:%lld:%lld.%09ld:%lld.%09ld", (unsigned long long)w->file_st.st_dev,
               (unsigned long long)w->file_st.st_ino, (long long)w->file_st.st_size, (long long)w->file_st.st_mtim.tv_sec,
               w->file_st.st_mtim.tv_nsec, (long long)w->file_st.st_ctim.tv_sec, w->file_st.st_ctim.tv_nsec);
      set_string(env, r, "identity", id, NAPI_AUTO_LENGTH);
      // The name in the header just written and the data's length, so the caller need not parse them.
      set_string(env, r, "path", w->path.data, w->pending_path_len);
      set_number(env, r, "size", (double)w->file_size);
      return r;
    }
    if (w->file_fd >= 0) {
      size_t n = 0;
      if ((err = copy_file_data(w, buf + pos, len - pos, &n))) return throw_walk(env, w, "read", err);
      pos += n;
      continue;
    }
    if (w->done) break;
    bool stopped = false;
    refusal refused = {0};
    if ((err = walk_step(w, &stopped, &refused))) return throw_walk(env, w, "open", err);
    if (refused.message) {
      napi_value r = fill_result(env, w, pos - offset, "refused");
      set_string(env, r, "message", refused.message, NAPI_AUTO_LENGTH);
      free(refused.message);
      return r;
    }
    if (stopped) return fill_result(env, w, pos - offset, "xattrs");
  }
  bool done = w->done && w->header_off == w->header.len && w->file_fd < 0;
  return fill_result(env, w, pos - offset, done ? "done" : "full");
}

// archiveWalkPending(walker) -> { fd, kind: 'file'|'directory', path } of the entry waiting for its xattrs.
// The fd stays the walk's; use it only until archiveWalkResume.
static napi_value js_walk_pending(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], r, fd;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  walker *w = argc ? get_walker(env, argv[0]) : NULL;
  if (!w) return NULL;
  if (w->pending == PENDING_NONE) return tx_type_error(env, "archiveWalkPending: no entry waits");
  napi_create_object(env, &r);
  napi_create_int32(env, w->pending_fd, &fd);
  napi_set_named_property(env, r, "fd", fd);
  set_string(env, r, "kind", w->pending == PENDING_FILE ? "file" : "directory", NAPI_AUTO_LENGTH);
  size_t rel_len;
  const char *rel = rel_of(w, w->pending_path_len, &rel_len);
  set_string(env, r, "rel", rel, rel_len);
  return r;
}

// archiveWalkResume(walker, xattrs: [name, Buffer][] | null, metacopy: boolean): emits the waiting entry with
// the records the policy kept; metacopy (upper layer files only) stores it without data.
static napi_value js_walk_resume(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_valuetype t;
  bool metacopy = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3) return tx_type_error(env, "archiveWalkResume(walker, xattrs, metacopy)");
  walker *w = get_walker(env, argv[0]);
  if (!w) return NULL;
  if (w->pending == PENDING_NONE) return tx_type_error(env, "archiveWalkResume: no entry waits");
  napi_typeof(env, argv[1], &t);
  napi_value xattrs = t == napi_object ? argv[1] : NULL;
  napi_get_value_bool(env, argv[2], &metacopy);
  pending_kind kind = w->pending;
  int fd = w->pending_fd;
  w->pending = PENDING_NONE;
  w->pending_fd = -1;
  w->path.len = w->pending_path_len;
  int err = kind == PENDING_DIR ? emit(w, '5', &w->pending_st, 0, NULL, 0, -1, env, xattrs)
                                : start_file_data(w, fd, &w->pending_st, env, xattrs, metacopy && w->upper);
  if (err) return throw_walk(env, w, "header", err);
  return tx_undefined(env);
}

// archiveWalkPauseFiles(walker): from now on each fill stops with status "file" before a regular file's data.
static napi_value js_walk_pause_files(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  walker *w = argc ? get_walker(env, argv[0]) : NULL;
  if (!w) return NULL;
  w->pause_files = true;
  return tx_undefined(env);
}

// archiveWalkSkipFile(walker): after status "file", ends that file without reading its data (the caller
// supplies it from an earlier snapshot). The archive still gets the padding after the data.
static napi_value js_walk_skip_file(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  walker *w = argc ? get_walker(env, argv[0]) : NULL;
  if (!w) return NULL;
  if (w->file_fd < 0 || w->file_remaining != w->file_size) return tx_type_error(env, "archiveWalkSkipFile: no file waits for its data");
  close(w->file_fd);
  w->file_fd = -1;
  w->files++;
  w->bytes_done += (double)w->file_size;
  w->file_remaining = 0;
  size_t pad = (TAR_BLOCK - w->file_size % TAR_BLOCK) % TAR_BLOCK;
  if (!tx_bytes_zeros(&w->header, pad)) return tx_throw(env, "archiveWalkSkipFile: malloc", ENOMEM);
  return tx_undefined(env);
}

// archiveWalkClose(walker): closes every fd the walk holds; the walker is unusable afterwards.
static napi_value js_walk_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *data = NULL;
  if (argc < 1 || napi_get_value_external(env, argv[0], &data) != napi_ok)
    return tx_type_error(env, "archiveWalkClose(walker)");
  if (data) {
    walker *w = data;
    // Keep the external valid but empty: free everything the walk holds, leave a finished shell.
    for (size_t i = 0; i < w->depth; i++) frame_free(&w->stack[i]);
    w->depth = 0;
    if (w->file_fd >= 0) close(w->file_fd);
    w->file_fd = -1;
    if (w->pending == PENDING_FILE && w->pending_fd >= 0) close(w->pending_fd);
    if (!w->started && w->pending_fd >= 0) close(w->pending_fd);
    w->pending = PENDING_NONE;
    w->pending_fd = -1;
    w->started = w->done = true;
    w->header.len = w->header_off = 0;
  }
  return tx_undefined(env);
}

void tx_register_archive(napi_env env, napi_value addon, napi_value constants) {
  tx_set_constant(env, constants, "TAR_BLOCK", TAR_BLOCK);
  tx_set_function(env, addon, "archiveWalkStart", js_walk_start);
  tx_set_function(env, addon, "archiveWalkFill", js_walk_fill);
  tx_set_function(env, addon, "archiveWalkPending", js_walk_pending);
  tx_set_function(env, addon, "archiveWalkResume", js_walk_resume);
  tx_set_function(env, addon, "archiveWalkClose", js_walk_close);
  tx_set_function(env, addon, "archiveWalkPauseFiles", js_walk_pause_files);
  tx_set_function(env, addon, "archiveWalkSkipFile", js_walk_skip_file);
}
