// The hot loop of a restore: parse an untrusted pax tar stream and create its entries below staging
// directories, in C, so that a restore costs about what `tar -x` costs (src/content/archive.ts drives it).
// The rules are those of docs/backup-format.md, "Walking and extracting safely": every entry is untrusted.
//
// - Entry paths are split into components; absolute paths, "..", NUL and unknown roots are refused.
// - Parents are opened one component at a time with openat(O_DIRECTORY|O_NOFOLLOW) from the root's fd, so
//   no path goes through a symlink (or anything else) an earlier entry created.
// - Everything is created with *at calls in the fd-walked parent: openat(O_CREAT|O_EXCL|O_NOFOLLOW),
//   mkdirat, symlinkat, linkat (no AT_SYMLINK_FOLLOW), mknodat only for a 0/0 whiteout in the upper root.
// - Owners, modes and times are set on fds or with AT_SYMLINK_NOFOLLOW; directories last, deepest first.
//
// What stays in TypeScript: the xattr policy (src/content/xattrs.ts). A file or directory with xattrs (or
// a metadata-only size) stops the feed with status "xattrs"; the caller checks and translates them and
// hands the host values back with extractResume(), or refuses the archive.
//
// Refusals come back as { status: 'refused', message } (DATA_LOSS); unexpected errnos are NativeErrors.
//
// Layer mode (extractStartLayer, src/images/unpack.ts): the same walk and creation rules for an OCI image
// layer, whose entry paths have no root name. Differences, each marked `x->layer`: a ".wh.NAME" file becomes
// a 0/0 character device NAME (overlayfs's whiteout) and ".wh..wh..opq" the trusted.overlay.opaque xattr of
// its directory; symlink targets are not checked (nothing here follows them); character and block devices
// are skipped (never created) and FIFOs made; pax global headers are ignored; setuid/setgid bits are
// dropped from entries whose owner is outside the mapped range.
#define _GNU_SOURCE
#include "bytes.h"
#include "tetrix.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define MAX_EXTENDED (1 << 20)
#define OVERFLOW_ID 65534
#define MAX_SAFE 9007199254740991.0

// An xattr as it is set on the host: name and value (already checked and translated by xattrs.ts).
typedef struct {
  char *name;
  char *value;
  size_t len;
} xattr_t;

typedef struct {
  xattr_t *items;
  size_t count;
} xattr_list;

static void xattrs_free(xattr_list *l) {
  for (size_t i = 0; i < l->count; i++) {
    free(l->items[i].name);
    free(l->items[i].value);
  }
  free(l->items);
  l->items = NULL;
  l->count = 0;
}

typedef enum { T_FILE, T_HARDLINK, T_SYMLINK, T_CHAR, T_BLOCK, T_DIR, T_FIFO, T_PAX, T_PAX_GLOBAL, T_LONGNAME, T_LONGLINK, T_OTHER } entry_type;

typedef struct {
  tx_bytes path, linkpath;
  entry_type type;
  uint32_t mode;
  double uid, gid;
  double size;
  int64_t mtime_sec;
  long mtime_nsec;
  double dev_major, dev_minor;
  double metacopy_size;  // -1: none
  bool has_xattrs;
  tx_bytes xattr_raw;       // "<name>\0" <u32 len> <value>... of the pax SCHILY.xattr records
  size_t xattr_count;
} header_t;

typedef struct {
  char *name;
  int fd;     // -1: checked but not written (a root nobody asked for)
} root_t;

typedef struct {
  size_t root;
  char *rel;
  uint32_t mode;
  uint32_t uid, gid;   // host ids
  struct timespec mtime;
  xattr_list xattrs;
} pending_dir;

typedef struct {
  char *name;
  int fd;
} chain_link;

typedef enum { S_HEADER, S_EXTENDED, S_DATA, S_END } parse_state;

typedef struct {
  root_t *roots;
  size_t root_count;
  uint32_t uid_base, id_count;
  // An OCI image layer (extractStartLayer): one root, paths without a root name, whiteouts in their
  // .wh. form become overlayfs's, symlinks may point anywhere (the kernel resolves them inside the
  // workspace's root; this extractor never follows one), devices are skipped. See docs/images.md.
  bool layer;
  // Layer mode: parents made for an entry without an entry of their own ("a/b" for "a/b/.wh.c"), which
  // src/images gives the metadata the same directory has in the layers below (as containerd's mkparent).
  char **implicit;
  size_t implicit_count, implicit_cap;

  parse_state state;
  char block[TAR_BLOCK];
  size_t block_filled;
  int zero_blocks;

  entry_type ext_kind;
  tx_bytes ext;
  size_t ext_size, ext_pad;
  // Overrides for the next entry, from a pax header or GNU long name/link.
  bool have_pax, have_longname, have_longlink;
  tx_bytes pax, longname, longlink;

  header_t h;
  // The entry waiting for the xattr policy.
  bool waiting;
  size_t entry_root;
  char *entry_rel;

  // Data of the current file.
  int data_fd;          // -1: verified, not written
  double data_remaining;
  size_t data_pad;
  xattr_list data_xattrs;
  bool in_data;

  chain_link *chain;
  size_t chain_len, chain_cap;
  size_t chain_root;

  pending_dir *dirs;
  size_t dir_count, dir_cap;

  double files, bytes;
  char *refusal;        // set when the archive is refused (malloc'd message)
  bool busy;            // a feed runs on a worker thread: nothing else may touch the extractor
  bool close_requested; // closed while busy: done when the feed completes
} extractor;

// ---------------------------------------------------------------------------------------------------
// Refusals: "archive entry "<path>" refused: <why>", with the path quoted as JSON.stringify does.

static void json_quote(tx_bytes *out, const char *s, size_t n) {
  tx_bytes_append(out, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\', esc[1] = (char)c;
      tx_bytes_append(out, esc, 2);
    } else if (c < 0x20) {
      const char *named = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
      if (named) tx_bytes_append(out, named, 2);
      else tx_bytes_append(out, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", c));
    } else {
      tx_bytes_append(out, (const char *)&c, 1);
    }
  }
  tx_bytes_append(out, "\"", 1);
}

static void refuse_plain(extractor *x, const char *msg) {
  if (x->refusal) return;
  x->refusal = strdup(msg);
}

static void refuse_entry(extractor *x, const char *entry, size_t entry_len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void refuse_entry(extractor *x, const char *entry, size_t entry_len, const char *fmt, ...) {
  if (x->refusal) return;
  tx_bytes msg = {0};
  char why[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  tx_bytes_append(&msg, "archive entry ", 14);
  json_quote(&msg, entry, entry_len);
  tx_bytes_append(&msg, " refused: ", 10);
  tx_bytes_append(&msg, why, strlen(why));
  x->refusal = msg.data;
}

// The entry at hand refused; returns -1.
static int refuse_here(extractor *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int refuse_here(extractor *x, const char *fmt, ...) {
  char why[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  refuse_entry(x, x->h.path.data ? x->h.path.data : "", x->h.path.len, "%s", why);
  return -1;
}

#define REFUSE(x, ...) refuse_here((x), __VA_ARGS__)

// ---------------------------------------------------------------------------------------------------
// Header decoding (docs/backup-format.md; test/helpers/tar-oracle.ts writes what the tests feed it)

static size_t field_len(const char *b, size_t off, size_t len) {
  size_t n = 0;
  while (n < len && b[off + n] != 0) n++;
  return n;
}

// Octal text (NUL or space padded) or GNU base-256. false: malformed.
static bool read_number(const char *b, size_t off, size_t len, double *out) {
  const unsigned char *u = (const unsigned char *)b + off;
  if (u[0] & 0x80) {
    double v = u[0] & 0x7f;
    for (size_t i = 1; i < len; i++) v = v * 256 + u[i];
    if (v > MAX_SAFE) return false;
    *out = v;
    return true;
  }
  size_t end = field_len(b, off, len);
  size_t start = 0;
  while (start < end && (b[off + start] == ' ' || b[off + start] == '\t' || b[off + start] == '\n' || b[off + start] == '\r' || b[off + start] == '\v' || b[off + start] == '\f')) start++;
  while (end > start && (b[off + end - 1] == ' ' || b[off + end - 1] == '\t' || b[off + end - 1] == '\n' || b[off + end - 1] == '\r' || b[off + end - 1] == '\v' || b[off + end - 1] == '\f')) end--;
  double v = 0;
  for (size_t i = start; i < end; i++) {
    char c = b[off + i];
    if (c < '0' || c > '7') return false;
    v = v * 8 + (c - '0');
  }
  *out = v;
  return true;
}

static bool is_zero_block(const char *b) {
  for (int i = 0; i < TAR_BLOCK; i++)
    if (b[i]) return false;
  return true;
}

static entry_type type_of(char flag) {
  switch (flag) {
    case '0': case '\0': case '7': return T_FILE;
    case '1': return T_HARDLINK;
    case '2': return T_SYMLINK;
    case '3': return T_CHAR;
    case '4': return T_BLOCK;
    case '5': return T_DIR;
    case '6': return T_FIFO;
    case 'x': return T_PAX;
    case 'g': return T_PAX_GLOBAL;
    case 'L': return T_LONGNAME;
    case 'K': return T_LONGLINK;
    default: return T_OTHER;
  }
}

// Decodes one ustar block into x->h. false: refused (x->refusal set).
static bool decode_ustar(extractor *x, const char *b) {
  double stored;
  unsigned sum = 0;
  for (int i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (unsigned char)b[i];
  if (!read_number(b, 148, 8, &stored) || stored != sum) return refuse_plain(x, "archive: header checksum mismatch"), false;
  header_t *h = &x->h;
  h->path.len = h->linkpath.len = 0;
  bool ustar = memcmp(b + 257, "ustar", 5) == 0;
  size_t prefix = ustar ? field_len(b, 345, 155) : 0;
  if (!tx_bytes_reserve(&h->path, 300)) return refuse_plain(x, "archive: out of memory"), false;
  if (prefix) {
    tx_bytes_append(&h->path, b + 345, prefix);
    tx_bytes_append(&h->path, "/", 1);
  }
  tx_bytes_append(&h->path, b, field_len(b, 0, 100));
  tx_bytes_set(&h->linkpath, b + 157, field_len(b, 157, 100));
  h->type = type_of(b[156]);
  double mode, mtime;
  if (!read_number(b, 100, 8, &mode) || !read_number(b, 108, 8, &h->uid) || !read_number(b, 116, 8, &h->gid) ||
      !read_number(b, 124, 12, &h->size) || !read_number(b, 136, 12, &mtime)) {
    return refuse_plain(x, "archive: bad numeric field"), false;
  }
  h->mode = (uint32_t)((uint64_t)mode & 07777);
  h->mtime_sec = (int64_t)mtime;
  h->mtime_nsec = 0;
  h->dev_major = h->dev_minor = 0;
  if (h->type == T_CHAR || h->type == T_BLOCK) {
    if (!read_number(b, 329, 8, &h->dev_major) || !read_number(b, 337, 8, &h->dev_minor))
      return refuse_plain(x, "archive: bad numeric field"), false;
  }
  h->metacopy_size = -1;
  h->has_xattrs = false;
  h->xattr_raw.len = 0;
  h->xattr_count = 0;
  return true;
}

static bool all_digits(const char *s, size_t n) {
  if (n == 0) return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

static bool parse_count(const char *s, size_t n, double *out) {
  if (!all_digits(s, n)) return false;
  double v = 0;
  for (size_t i = 0; i < n; i++) v = v * 10 + (s[i] - '0');
  if (v > MAX_SAFE) return false;
  *out = v;
  return true;
}

// Applies the pax records in x->pax to x->h. false: refused.
static bool apply_pax(extractor *x) {
  const char *body = x->pax.data;
  size_t n = x->pax.len, off = 0;
  header_t *h = &x->h;
  while (off < n) {
    const char *space = memchr(body + off, ' ', n - off);
    if (!space) return refuse_plain(x, "archive: malformed pax record"), false;
    double len;
    size_t digits = (size_t)(space - (body + off));
    if (!parse_count(body + off, digits, &len) || len <= (double)digits || off + (size_t)len > n ||
        body[off + (size_t)len - 1] != '\n') {
      return refuse_plain(x, "archive: malformed pax record"), false;
    }
    size_t rec_end = off + (size_t)len - 1;  // the '\n'
    size_t key = off + digits + 1;
    const char *eq = memchr(body + key, '=', rec_end - key);
    if (!eq || eq == body + key) return refuse_plain(x, "archive: malformed pax record"), false;
    size_t key_len = (size_t)(eq - (body + key));
    const char *k = body + key;
    const char *v = eq + 1;
    size_t v_len = (size_t)(body + rec_end - v);
    off += (size_t)len;
#define KEY_IS(s) (key_len == sizeof(s) - 1 && memcmp(k, s, sizeof(s) - 1) == 0)
    if (key_len > 13 && memcmp(k, "SCHILY.xattr.", 13) == 0) {
      uint32_t vl = (uint32_t)v_len;
      if (!tx_bytes_append(&h->xattr_raw, k + 13, key_len - 13) || !tx_bytes_append(&h->xattr_raw, "", 1) ||
          !tx_bytes_append(&h->xattr_raw, &vl, sizeof vl) || !tx_bytes_append(&h->xattr_raw, v, v_len)) {
        return refuse_plain(x, "archive: out of memory"), false;
      }
      h->xattr_count++;
      h->has_xattrs = true;
    } else if (key_len == 13 && memcmp(k, "SCHILY.xattr.", 13) == 0) {
      return refuse_plain(x, "archive: pax xattr record without a name"), false;
    } else if (x->layer && key_len >= 7 && memcmp(k, "TETRIX.", 7) == 0) {
      return refuse_plain(x, "archive: Tetrix pax records in an image layer"), false;
    } else if (KEY_IS("TETRIX.metacopy.size")) {
      if (!parse_count(v, v_len, &h->metacopy_size)) return refuse_plain(x, "archive: bad pax TETRIX.metacopy.size"), false;
    } else if (key_len >= 7 && memcmp(k, "TETRIX.", 7) == 0) {
      tx_bytes msg = {0};
      tx_bytes_append(&msg, "archive: unknown pax record ", 28);
      json_quote(&msg, k, key_len);
      x->refusal = msg.data;
      return false;
    } else if (KEY_IS("path")) {
      tx_bytes_set(&h->path, v, v_len);
    } else if (KEY_IS("linkpath")) {
      tx_bytes_set(&h->linkpath, v, v_len);
    } else if (KEY_IS("size") || KEY_IS("uid") || KEY_IS("gid")) {
      double value;
      if (!parse_count(v, v_len, &value)) {
        char msg[64];
        snprintf(msg, sizeof msg, "archive: bad pax %.*s", (int)key_len, k);
        return refuse_plain(x, msg), false;
      }
      if (KEY_IS("size")) h->size = value;
      else if (KEY_IS("uid")) h->uid = value;
      else h->gid = value;
    } else if (KEY_IS("mtime")) {
      // ^(\d+)(?:\.(\d{1,9})\d*)?$
      const char *dot = memchr(v, '.', v_len);
      size_t int_len = dot ? (size_t)(dot - v) : v_len;
      double secs;
      if (!parse_count(v, int_len, &secs)) return refuse_plain(x, "archive: bad pax mtime"), false;
      long nsec = 0;
      if (dot) {
        size_t frac_len = v_len - int_len - 1;
        if (!all_digits(dot + 1, frac_len)) return refuse_plain(x, "archive: bad pax mtime"), false;
        for (size_t i = 0; i < 9; i++) nsec = nsec * 10 + (i < frac_len ? dot[1 + i] - '0' : 0);
      }
      h->mtime_sec = (int64_t)secs;
      h->mtime_nsec = nsec;
    }
#undef KEY_IS
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------
// Paths (src/content/archive.ts splitEntryPath) and the fd walk

typedef struct {
  size_t root;
  char *rel;  // malloc'd, "" for the root itself; components joined by '/'
} entry_path;

// false: refused.
static bool split_entry_path(extractor *x, const char *p, size_t n, entry_path *out, bool unknown_root_refused) {
  if (n > 0 && p[0] == '/') return refuse_entry(x, p, n, "absolute path"), false;
  if (strlen(p) != n) return refuse_entry(x, p, n, "NUL in path"), false;
  tx_bytes rel = {0};
  const char *root = NULL;
  size_t root_len = 0;
  if (x->layer) root = "", root_len = 0;  // every component belongs to the path
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && p[j] != '/') j++;
    size_t len = j - i;
    if (len == 2 && p[i] == '.' && p[i + 1] == '.') {
      free(rel.data);
      return refuse_entry(x, p, n, "\"..\" in path"), false;
    }
    if (len > 0 && !(len == 1 && p[i] == '.')) {
      if (!root) {
        root = p + i;
        root_len = len;
      } else {
        if (rel.len) tx_bytes_append(&rel, "/", 1);
        tx_bytes_append(&rel, p + i, len);
      }
    }
    i = j + 1;
  }
  if (!root) {
    free(rel.data);
    return refuse_entry(x, p, n, "empty path"), false;
  }
  if (x->layer) {
    out->root = 0;
    out->rel = rel.data ? rel.data : strdup("");
    return out->rel != NULL;
  }
  for (size_t r = 0; r < x->root_count; r++) {
    if (strlen(x->roots[r].name) == root_len && memcmp(x->roots[r].name, root, root_len) == 0) {
      out->root = r;
      out->rel = rel.data ? rel.data : strdup("");
      return out->rel != NULL;
    }
  }
  free(rel.data);
  if (unknown_root_refused) refuse_entry(x, p, n, "unknown archive root \"%.*s\"", (int)root_len, root);
  return false;
}

static void close_chain(extractor *x) {
  while (x->chain_len) {
    chain_link *l = &x->chain[--x->chain_len];
    close(l->fd);
    free(l->name);
  }
}

// A failed component open: a refusal for ENOTDIR/ELOOP/ENOENT, else errno (> 0).
static int component_error(extractor *x, const char *part, int err) {
  if (err == ENOTDIR || err == ELOOP) return REFUSE(x, "path goes through \"%s\", which is not a directory (a symlink?)", part);
  if (err == ENOENT) return REFUSE(x, "\"%s\" does not exist", part);
  return err;
}

static int open_dir_at(int dir_fd, const char *name) {
  return openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

// rel (cut at the component just made) joins the implicit parents.
static bool note_implicit(extractor *x, const char *rel) {
  if (x->implicit_count == x->implicit_cap) {
    size_t cap = x->implicit_cap ? x->implicit_cap * 2 : 16;
    char **p = realloc(x->implicit, cap * sizeof *p);
    if (!p) return false;
    x->implicit = p;
    x->implicit_cap = cap;
  }
  if (!(x->implicit[x->implicit_count] = strdup(rel))) return false;
  x->implicit_count++;
  return true;
}

// A directory entry of its own: no longer an implicit parent.
static void drop_implicit(extractor *x, const char *rel) {
  for (size_t i = 0; i < x->implicit_count; i++) {
    if (strcmp(x->implicit[i], rel) != 0) continue;
    free(x->implicit[i]);
    x->implicit[i] = x->implicit[--x->implicit_count];
    return;
  }
}

// The parent directory fd of rel in a written root, opening (and creating, 0755, as tar does) missing
// parents one component at a time. The chain of open parents is kept between entries. Returns 0 with
// *dir_fd and *name (pointing into rel), -1 refused, or an errno.
static int parent_of(extractor *x, size_t root, char *rel, int *dir_fd, const char **name) {
  if (x->chain_root != root) {
    close_chain(x);
    x->chain_root = root;
  }
  char *slash = strrchr(rel, '/');
  *name = slash ? slash + 1 : rel;
  size_t depth = 0;
  char *p = rel;
  int fd = x->roots[root].fd;
  while (slash && p <= slash) {
    char *end = strchr(p, '/');
    *end = 0;
    if (depth < x->chain_len && strcmp(x->chain[depth].name, p) == 0) {
      fd = x->chain[depth].fd;
    } else {
      while (x->chain_len > depth) {
        chain_link *l = &x->chain[--x->chain_len];
        close(l->fd);
        free(l->name);
      }
      int next = open_dir_at(fd, p);
      if (next < 0 && errno == ENOENT) {
        if (mkdirat(fd, p, 0755) != 0 && errno != EEXIST) {
          int err = errno;
          *end = '/';
          return err;
        }
        if (x->layer && !note_implicit(x, rel)) {
          *end = '/';
          return ENOMEM;
        }
        next = open_dir_at(fd, p);
      }
      if (next < 0) {
        int err = component_error(x, p, errno);
        *end = '/';
        return err;
      }
      if (x->chain_len == x->chain_cap) {
        size_t cap = x->chain_cap ? x->chain_cap * 2 : 16;
        chain_link *c = realloc(x->chain, cap * sizeof *c);
        if (!c) {
          close(next);
          *end = '/';
          return ENOMEM;
        }
        x->chain = c;
        x->chain_cap = cap;
      }
      x->chain[x->chain_len].name = strdup(p);
      x->chain[x->chain_len].fd = next;
      x->chain_len++;
      fd = next;
    }
    *end = '/';
    depth++;
    p = end + 1;
  }
  // Entries deeper in the chain than this parent are closed on the next walk.
  *dir_fd = fd;
  return 0;
}

// Like parent_of but with its own fds, opening only existing directories; *dir_fd is the caller's to close.
static int resolve_parent(extractor *x, size_t root, char *rel, int *dir_fd, const char **name) {
  char *slash = strrchr(rel, '/');
  *name = slash ? slash + 1 : rel;
  int fd = openat(x->roots[root].fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  for (char *p = rel; slash && p <= slash;) {
    char *end = strchr(p, '/');
    *end = 0;
    int next = open_dir_at(fd, p);
    int err = next < 0 ? component_error(x, p, errno) : 0;
    *end = '/';
    close(fd);
    if (next < 0) return err;
    fd = next;
    p = end + 1;
  }
  *dir_fd = fd;
  return 0;
}

typedef int (*create_fn)(int dir_fd, const char *name, void *arg);

// Creates name in dir_fd; an existing non-directory there is replaced (tar semantics). -1 refused.
static int create_at(extractor *x, int dir_fd, const char *name, create_fn create, void *arg) {
  int rc = create(dir_fd, name, arg);
  if (rc >= 0) return rc;
  if (errno != EEXIST) return -2;
  struct stat st;
  if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return -2;
  if (S_ISDIR(st.st_mode)) return REFUSE(x, "would replace a directory");
  if (unlinkat(dir_fd, name, 0) != 0) return -2;
  rc = create(dir_fd, name, arg);
  return rc >= 0 ? rc : -2;
}

static int create_file(int dir_fd, const char *name, void *arg) {
  (void)arg;
  return openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
}

static int create_symlink(int dir_fd, const char *name, void *arg) {
  return symlinkat((const char *)arg, dir_fd, name);
}

typedef struct {
  int dir_fd;
  const char *name;
} link_source;

static int create_hardlink(int dir_fd, const char *name, void *arg) {
  link_source *src = arg;
  return linkat(src->dir_fd, src->name, dir_fd, name, 0);
}

static int create_whiteout(int dir_fd, const char *name, void *arg) {
  (void)arg;
  return mknodat(dir_fd, name, S_IFCHR | 0, makedev(0, 0));
}

static uint32_t to_host_id(const extractor *x, double id) {
  return (id >= 0 && id < x->id_count ? (uint32_t)id : OVERFLOW_ID) + x->uid_base;
}

static struct timespec entry_mtime(const header_t *h) {
  struct timespec t = {.tv_sec = h->mtime_sec, .tv_nsec = h->mtime_nsec};
  return t;
}

static int set_fd_metadata(int fd, uint32_t uid, uint32_t gid, uint32_t mode, const xattr_list *xattrs,
                           struct timespec mtime, const char **step) {
  if (fchown(fd, uid, gid) != 0) return *step = "fchown", errno;
  // After chown, which clears setuid/setgid.
  if (fchmod(fd, mode & 07777) != 0) return *step = "fchmod", errno;
  // After chown and the data, both of which drop security.capability (capabilities(7)).
  for (size_t i = 0; xattrs && i < xattrs->count; i++)
    if (fsetxattr(fd, xattrs->items[i].name, xattrs->items[i].value, xattrs->items[i].len, 0) != 0) return *step = "fsetxattr", errno;
  struct timespec times[2] = {mtime, mtime};
  if (futimens(fd, times) != 0) return *step = "futimens", errno;
  return 0;
}

static int set_link_metadata(int dir_fd, const char *name, uint32_t uid, uint32_t gid, struct timespec mtime,
                             const char **step) {
  if (fchownat(dir_fd, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0) return *step = "fchownat", errno;
  struct timespec times[2] = {mtime, mtime};
  if (utimensat(dir_fd, name, times, AT_SYMLINK_NOFOLLOW) != 0) return *step = "utimensat", errno;
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// Entries (src/content/archive.ts ArchiveExtractor#onEntry and friends)

typedef struct {
  int err;            // errno, 0 if none
  const char *step;
} sys_error;

static bool sys_fail(sys_error *e, const char *step, int err) {
  e->err = err;
  e->step = step;
  return false;
}

static bool no_data(extractor *x) {
  if (x->h.size != 0) return REFUSE(x, "non-file entry carries data"), false;
  return true;
}

static bool no_xattrs(extractor *x) {
  if (x->h.has_xattrs) return REFUSE(x, "xattrs on an entry that is not a file or directory"), false;
  if (x->h.metacopy_size >= 0) return REFUSE(x, "a metadata-only size on an entry that is not a file"), false;
  return true;
}

static bool end_data(extractor *x, sys_error *e) {
  header_t *h = &x->h;
  int fd = x->data_fd;
  x->data_fd = -1;
  x->in_data = false;
  x->state = S_HEADER;
  if (fd >= 0) {
    const char *step = NULL;
    int err = 0;
    if (h->metacopy_size >= 0 && ftruncate(fd, (off_t)h->metacopy_size) != 0) err = errno, step = "ftruncate";
    if (!err) err = set_fd_metadata(fd, to_host_id(x, h->uid), to_host_id(x, h->gid), h->mode, &x->data_xattrs, entry_mtime(h), &step);
    close(fd);
    if (err) return sys_fail(e, step, err);
  }
  xattrs_free(&x->data_xattrs);
  x->files++;
  x->bytes += h->size;
  return true;
}

static bool on_file(extractor *x, size_t root, char *rel, sys_error *e) {
  header_t *h = &x->h;
  x->data_fd = -1;
  if (x->roots[root].fd >= 0) {
    int dir_fd;
    const char *name;
    int rc = parent_of(x, root, rel, &dir_fd, &name);
    if (rc < 0) return false;
    if (rc > 0) return sys_fail(e, "openat parent", rc);
    int fd = create_at(x, dir_fd, name, create_file, NULL);
    if (fd == -1) return false;
    if (fd < 0) return sys_fail(e, "openat", errno);
    x->data_fd = fd;
  }
  x->data_remaining = h->size;
  x->data_pad = (size_t)((TAR_BLOCK - (uint64_t)h->size % TAR_BLOCK) % TAR_BLOCK);
  x->in_data = true;
  x->state = S_DATA;
  if (h->size == 0 && x->data_pad == 0) return end_data(x, e);
  return true;
}

static bool record_dir(extractor *x, size_t root, const char *rel, xattr_list *xattrs) {
  if (x->dir_count == x->dir_cap) {
    size_t cap = x->dir_cap ? x->dir_cap * 2 : 64;
    pending_dir *d = realloc(x->dirs, cap * sizeof *d);
    if (!d) return false;
    x->dirs = d;
    x->dir_cap = cap;
  }
  pending_dir *d = &x->dirs[x->dir_count];
  d->rel = strdup(rel);
  if (!d->rel) return false;
  d->root = root;
  d->mode = x->h.mode;
  d->uid = to_host_id(x, x->h.uid);
  d->gid = to_host_id(x, x->h.gid);
  d->mtime = entry_mtime(&x->h);
  d->xattrs = *xattrs;
  xattrs->items = NULL;
  xattrs->count = 0;
  x->dir_count++;
  return true;
}

static bool on_directory(extractor *x, size_t root, char *rel, xattr_list *xattrs, sys_error *e) {
  x->files++;
  if (x->roots[root].fd < 0) return true;
  if (x->layer) drop_implicit(x, rel);
  if (rel[0]) {
    int dir_fd;
    const char *name;
    int rc = parent_of(x, root, rel, &dir_fd, &name);
    if (rc < 0) return false;
    if (rc > 0) return sys_fail(e, "openat parent", rc);
    if (mkdirat(dir_fd, name, 0700) != 0) {
      if (errno != EEXIST) return sys_fail(e, "mkdirat", errno);
      struct stat st;
      if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return sys_fail(e, "fstatat", errno);
      if (!S_ISDIR(st.st_mode)) {
        if (unlinkat(dir_fd, name, 0) != 0) return sys_fail(e, "unlinkat", errno);
        if (mkdirat(dir_fd, name, 0700) != 0) return sys_fail(e, "mkdirat", errno);
      }
    }
  }
  if (!record_dir(x, root, rel, xattrs)) return sys_fail(e, "malloc", ENOMEM);
  return true;
}

// The lexical containment rule of src/content/archive.ts symlinkEscapes().
static bool symlink_escapes(const char *rel, const char *target, size_t target_len) {
  if (target_len == 0 || target[0] == '/' || strlen(target) != target_len) return true;
  long depth = 0;
  for (const char *p = rel; *p; p++) depth += *p == '/';
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

// A symlink or whiteout, counted, then (unless only checking) created in its parent with the entry's
// owner (shifted) and mtime; `call` names the creating syscall in an error.
static bool make_node(extractor *x, size_t root, char *rel, sys_error *e, create_fn create, void *arg, const char *call) {
  header_t *h = &x->h;
  x->files++;
  if (x->roots[root].fd < 0) return true;
  int dir_fd;
  const char *name;
  int rc = parent_of(x, root, rel, &dir_fd, &name);
  if (rc < 0) return false;
  if (rc > 0) return sys_fail(e, "openat parent", rc);
  rc = create_at(x, dir_fd, name, create, arg);
  if (rc == -1) return false;
  if (rc < 0) return sys_fail(e, call, errno);
  const char *step = NULL;
  int err = set_link_metadata(dir_fd, name, to_host_id(x, h->uid), to_host_id(x, h->gid), entry_mtime(h), &step);
  return err ? sys_fail(e, step, err) : true;
}

static bool on_symlink(extractor *x, size_t root, char *rel, sys_error *e) {
  header_t *h = &x->h;
  if (!no_data(x)) return false;
  if (!rel[0]) return REFUSE(x, "the root must be a directory"), false;
  if (x->layer && (h->linkpath.len == 0 || strlen(h->linkpath.data) != h->linkpath.len)) return REFUSE(x, "empty or NUL symlink target"), false;
  if (!x->layer && symlink_escapes(rel, h->linkpath.data ? h->linkpath.data : "", h->linkpath.len)) {
    tx_bytes q = {0};
    json_quote(&q, h->linkpath.data ? h->linkpath.data : "", h->linkpath.len);
    REFUSE(x, "symlink target %s leaves the root", q.data);
    free(q.data);
    return false;
  }
  if (!no_xattrs(x)) return false;
  return make_node(x, root, rel, e, create_symlink, h->linkpath.data, "symlinkat");
}

static bool on_hardlink(extractor *x, size_t root, char *rel, sys_error *e) {
  header_t *h = &x->h;
  if (!no_data(x)) return false;
  if (!rel[0]) return REFUSE(x, "the root must be a directory"), false;
  entry_path source;
  if (!split_entry_path(x, h->linkpath.data ? h->linkpath.data : "", h->linkpath.len, &source, false)) {
    if (x->refusal) return false;
    return REFUSE(x, "hard link source outside its root"), false;
  }
  if (source.root != root || !source.rel[0]) {
    free(source.rel);
    return REFUSE(x, "hard link source outside its root"), false;
  }
  if (!no_xattrs(x)) {
    free(source.rel);
    return false;
  }
  x->files++;
  if (x->roots[root].fd < 0) {
    free(source.rel);
    return true;
  }
  link_source src;
  int rc = resolve_parent(x, root, source.rel, &src.dir_fd, &src.name);
  bool ok = false;
  if (rc < 0) goto out_rel;
  if (rc > 0) {
    sys_fail(e, "openat link source", rc);
    goto out_rel;
  }
  struct stat st;
  if (fstatat(src.dir_fd, src.name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) REFUSE(x, "hard link source does not exist (yet)");
    else sys_fail(e, "fstatat link source", errno);
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    REFUSE(x, "hard link source is not a regular file");
    goto out;
  }
  int dir_fd;
  const char *name;
  rc = parent_of(x, root, rel, &dir_fd, &name);
  if (rc < 0) goto out;
  if (rc > 0) {
    sys_fail(e, "openat parent", rc);
    goto out;
  }
  rc = create_at(x, dir_fd, name, create_hardlink, &src);
  if (rc == -1) goto out;
  if (rc < 0) {
    if (errno == ENOENT) REFUSE(x, "hard link source does not exist (yet)");
    else sys_fail(e, "linkat", errno);
    goto out;
  }
  ok = true;
out:
  close(src.dir_fd);
out_rel:
  free(source.rel);
  return ok;
}

static bool on_whiteout(extractor *x, size_t root, char *rel, sys_error *e) {
  header_t *h = &x->h;
  if (!no_data(x)) return false;
  if (x->layer && (h->dev_major != 0 || h->dev_minor != 0)) return x->files++, true;  // never created
  if (h->dev_major != 0 || h->dev_minor != 0) return REFUSE(x, "device nodes are not restored"), false;
  if (!x->layer && strcmp(x->roots[root].name, "upper") != 0) return REFUSE(x, "a whiteout (0/0 device) outside the upper root"), false;
  if (!rel[0]) return REFUSE(x, "the root must be a directory"), false;
  if (!no_xattrs(x)) return false;
  return make_node(x, root, rel, e, create_whiteout, NULL, "mknodat whiteout");
}

// --- layer mode: whiteouts, FIFOs ------------------------------------------------------------------

#define WHITEOUT_PREFIX ".wh."
#define OPAQUE_MARKER ".wh..wh..opq"

static const char *base_name(const char *rel) {
  const char *slash = strrchr(rel, '/');
  return slash ? slash + 1 : rel;
}

// A ".wh." component anywhere but as the last one (aufs's .wh..wh.plnk hard-link dirs, a whiteout
// "directory") has no overlayfs meaning: refused.
static bool whiteout_inside(const char *rel) {
  for (const char *p = rel; *p;) {
    const char *end = strchrnul(p, '/');
    if (*end && strncmp(p, WHITEOUT_PREFIX, 4) == 0) return true;
    p = *end ? end + 1 : end;
  }
  return false;
}

// ".wh..wh..opq": the directory hides every lower layer's entries (trusted.overlay.opaque=y).
static bool on_opaque_marker(extractor *x, size_t root, char *rel, sys_error *e) {
  x->files++;
  int dir_fd;
  const char *name;
  int rc = parent_of(x, root, rel, &dir_fd, &name);
  if (rc < 0) return false;
  if (rc > 0) return sys_fail(e, "openat parent", rc);
  if (fsetxattr(dir_fd, "trusted.overlay.opaque", "y", 1, 0) != 0) return sys_fail(e, "fsetxattr trusted.overlay.opaque", errno);
  return true;
}

// ".wh.NAME": NAME is deleted in this layer, overlayfs's way (a 0/0 character device, owned by root).
static bool on_whiteout_file(extractor *x, size_t root, char *rel, sys_error *e) {
  const char *base = base_name(rel);
  const char *target = base + strlen(WHITEOUT_PREFIX);
  if (strncmp(target, WHITEOUT_PREFIX, 4) == 0) return REFUSE(x, "unknown whiteout metadata entry"), false;
  if (!target[0] || strcmp(target, ".") == 0 || strcmp(target, "..") == 0) return REFUSE(x, "whiteout of no name"), false;
  if (!no_xattrs(x)) return false;
  // rel with the ".wh." cut out of its last component.
  size_t dir_len = (size_t)(base - rel);
  char *hidden = malloc(dir_len + strlen(target) + 1);
  if (!hidden) return sys_fail(e, "malloc", ENOMEM);
  memcpy(hidden, rel, dir_len);
  strcpy(hidden + dir_len, target);
  x->h.uid = x->h.gid = 0;
  bool ok = make_node(x, root, hidden, e, create_whiteout, NULL, "mknodat whiteout");
  free(hidden);
  return ok;
}

static int create_fifo(int dir_fd, const char *name, void *arg) {
  (void)arg;
  return mknodat(dir_fd, name, S_IFIFO | 0600, 0);
}

// The layer-mode entries that differ from a restore's; *handled false: go on as a restore would.
static bool on_layer_entry(extractor *x, size_t root, char *rel, sys_error *e, bool *handled) {
  header_t *h = &x->h;
  *handled = true;
  if (whiteout_inside(rel)) return REFUSE(x, "a path through a whiteout entry"), false;
  // Outside the mapped range an owner reads as nobody: its setuid/setgid bits must not make a nobody
  // program the workspace did not ask for.
  if (h->uid < 0 || h->uid >= x->id_count) h->mode &= ~04000u;
  if (h->gid < 0 || h->gid >= x->id_count) h->mode &= ~02000u;
  const char *base = base_name(rel);
  if (strncmp(base, WHITEOUT_PREFIX, 4) == 0) {
    if (h->type != T_FILE) return REFUSE(x, "a whiteout that is not a plain file"), false;
    if (!no_data(x)) return false;
    if (strcmp(base, OPAQUE_MARKER) == 0) return on_opaque_marker(x, root, rel, e);
    return on_whiteout_file(x, root, rel, e);
  }
  if (h->type == T_BLOCK) {
    if (!no_data(x)) return false;
    x->files++;  // devices are never created from an image
    return true;
  }
  if (h->type == T_FIFO) {
    if (!no_data(x) || !no_xattrs(x)) return false;
    if (!rel[0]) return REFUSE(x, "the root must be a directory"), false;
    if (!make_node(x, root, rel, e, create_fifo, NULL, "mknodat fifo")) return false;
    int dir_fd;
    const char *name;
    int rc = parent_of(x, root, rel, &dir_fd, &name);
    if (rc != 0) return rc < 0 ? false : sys_fail(e, "openat parent", rc);
    if (fchmodat(dir_fd, name, h->mode & 0777, AT_SYMLINK_NOFOLLOW) != 0) return sys_fail(e, "fchmodat fifo", errno);
    return true;
  }
  *handled = false;
  return true;
}

// The entry after its header (and any xattr decision). false: refused or a system error.
static bool act_on_entry(extractor *x, size_t root, char *rel, xattr_list *xattrs, sys_error *e) {
  switch (x->h.type) {
    case T_FILE:
      // Set before on_file: an empty file ends (and gets its metadata) right there.
      xattrs_free(&x->data_xattrs);
      x->data_xattrs = *xattrs;
      xattrs->items = NULL;
      xattrs->count = 0;
      return on_file(x, root, rel, e);
    case T_DIR: return on_directory(x, root, rel, xattrs, e);
    default: return false;
  }
}

// Returns 1 when the entry waits for the xattr policy, 0 when handled, -1 on refusal or error.
static int on_entry(extractor *x, sys_error *e) {
  header_t *h = &x->h;
  entry_path p;
  if (!split_entry_path(x, h->path.data ? h->path.data : "", h->path.len, &p, true)) return -1;
  bool ok = true;
  if (x->layer) {
    bool handled;
    ok = on_layer_entry(x, p.root, p.rel, e, &handled);
    if (handled) {
      free(p.rel);
      return ok ? 0 : -1;
    }
  }
  switch (h->type) {
    case T_FILE:
      if (!p.rel[0]) {
        REFUSE(x, "the root must be a directory");
        ok = false;
        break;
      }
      if (h->has_xattrs || h->metacopy_size >= 0) goto wait;
      {
        xattr_list none = {0};
        ok = act_on_entry(x, p.root, p.rel, &none, e);
      }
      break;
    case T_DIR:
      if (!no_data(x)) {
        ok = false;
        break;
      }
      if (h->has_xattrs) goto wait;
      {
        xattr_list none = {0};
        ok = act_on_entry(x, p.root, p.rel, &none, e);
      }
      break;
    case T_SYMLINK: ok = on_symlink(x, p.root, p.rel, e); break;
    case T_HARDLINK: ok = on_hardlink(x, p.root, p.rel, e); break;
    case T_CHAR: ok = on_whiteout(x, p.root, p.rel, e); break;
    case T_BLOCK: REFUSE(x, "device nodes are not restored"); ok = false; break;
    case T_FIFO: REFUSE(x, "FIFOs are not restored"); ok = false; break;
    default: REFUSE(x, "unsupported entry type"); ok = false; break;
  }
  free(p.rel);
  return ok ? 0 : -1;
wait:
  x->waiting = true;
  x->entry_root = p.root;
  x->entry_rel = p.rel;
  return 1;
}

// ---------------------------------------------------------------------------------------------------
// The parser

static void end_extended(extractor *x) {
  if (x->ext_kind == T_PAX_GLOBAL) {
    // Layer mode: a global header (git archive writes a comment in one) changes nothing we apply.
  } else if (x->ext_kind == T_PAX) {
    tx_bytes_set(&x->pax, x->ext.data ? x->ext.data : "", x->ext.len);
    x->have_pax = true;
  } else {
    size_t n = strnlen(x->ext.data ? x->ext.data : "", x->ext.len);
    tx_bytes *dst = x->ext_kind == T_LONGNAME ? &x->longname : &x->longlink;
    tx_bytes_set(dst, x->ext.data ? x->ext.data : "", n);
    if (x->ext_kind == T_LONGNAME) x->have_longname = true;
    else x->have_longlink = true;
  }
  x->ext.len = 0;
  x->state = S_HEADER;
}

// Returns 1: the entry waits for xattrs, 0: go on, -1: refused or error.
static int on_header_block(extractor *x, const char *b, sys_error *e) {
  if (is_zero_block(b)) {
    if (++x->zero_blocks == 2) x->state = S_END;
    return 0;
  }
  if (x->zero_blocks) return refuse_plain(x, "archive: a lone zero block inside the archive"), -1;
  if (!decode_ustar(x, b)) return -1;
  header_t *h = &x->h;
  if (h->type == T_PAX || h->type == T_LONGNAME || h->type == T_LONGLINK || (x->layer && h->type == T_PAX_GLOBAL)) {
    if (h->size > MAX_EXTENDED) return refuse_plain(x, "archive: extended header too large"), -1;
    x->ext_kind = h->type;
    x->ext.len = 0;
    x->ext_size = (size_t)h->size;
    x->ext_pad = (TAR_BLOCK - x->ext_size % TAR_BLOCK) % TAR_BLOCK;
    if (!tx_bytes_reserve(&x->ext, x->ext_size + 1)) return sys_fail(e, "malloc", ENOMEM), -1;
    x->state = S_EXTENDED;
    if (x->ext_size == 0) end_extended(x);
    return 0;
  }
  if (h->type == T_PAX_GLOBAL) return refuse_plain(x, "archive: pax global headers are not used by Tetrix"), -1;
  if (x->have_pax && !apply_pax(x)) return -1;
  if (x->have_longname) tx_bytes_set(&h->path, x->longname.data, x->longname.len);
  if (x->have_longlink) tx_bytes_set(&h->linkpath, x->longlink.data, x->longlink.len);
  x->have_pax = x->have_longname = x->have_longlink = false;
  return on_entry(x, e);
}

// Consumes chunk[*off..]; returns 1 when an entry waits for xattrs, 0 when the chunk is used up (or the end
// was reached), -1 on refusal or error.
static int consume(extractor *x, const char *chunk, size_t len, size_t *off, sys_error *e) {
  while (*off < len) {
    switch (x->state) {
      case S_DATA: {
        if (x->data_remaining > 0) {
          size_t n = len - *off;
          if ((double)n > x->data_remaining) n = (size_t)x->data_remaining;
          if (x->data_fd >= 0) {
            for (size_t done = 0; done < n;) {
              ssize_t w = write(x->data_fd, chunk + *off + done, n - done);
              if (w < 0 && errno == EINTR) continue;
              if (w < 0) return sys_fail(e, "write", errno), -1;
              done += (size_t)w;
            }
          }
          *off += n;
          x->data_remaining -= (double)n;
          if (x->data_remaining == 0 && x->data_pad == 0 && !end_data(x, e)) return -1;
        } else {
          size_t n = len - *off < x->data_pad ? len - *off : x->data_pad;
          *off += n;
          x->data_pad -= n;
          if (x->data_pad == 0 && !end_data(x, e)) return -1;
        }
        break;
      }
      case S_EXTENDED: {
        if (x->ext.len < x->ext_size) {
          size_t n = len - *off < x->ext_size - x->ext.len ? len - *off : x->ext_size - x->ext.len;
          tx_bytes_append(&x->ext, chunk + *off, n);
          *off += n;
          if (x->ext.len == x->ext_size && x->ext_pad == 0) end_extended(x);
        } else {
          size_t n = len - *off < x->ext_pad ? len - *off : x->ext_pad;
          *off += n;
          x->ext_pad -= n;
          if (x->ext_pad == 0) end_extended(x);
        }
        break;
      }
      case S_HEADER: {
        const char *b;
        if (x->block_filled == 0 && len - *off >= TAR_BLOCK) {
          b = chunk + *off;  // a whole block in the chunk: no copy
          *off += TAR_BLOCK;
        } else {
          size_t n = len - *off < TAR_BLOCK - x->block_filled ? len - *off : TAR_BLOCK - x->block_filled;
          memcpy(x->block + x->block_filled, chunk + *off, n);
          x->block_filled += n;
          *off += n;
          if (x->block_filled < TAR_BLOCK) break;
          x->block_filled = 0;
          b = x->block;
        }
        int rc = on_header_block(x, b, e);
        if (rc != 0) return rc;
        break;
      }
      case S_END:
        // Trailing bytes after the marker (tar pads to a record size) are allowed only if zero.
        for (size_t i = *off; i < len; i++)
          if (chunk[i]) return refuse_plain(x, "archive: data after the end-of-archive marker"), -1;
        *off = len;
        return 0;
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// Directory metadata, applied last and deepest first so that adding children did not change it.

static int cmp_dirs_desc(const void *a, const void *b) {
  const pending_dir *x = a, *y = b;
  return -strcmp(x->rel, y->rel);
}

static bool apply_dir_metadata(extractor *x, sys_error *e) {
  qsort(x->dirs, x->dir_count, sizeof *x->dirs, cmp_dirs_desc);
  for (size_t i = 0; i < x->dir_count; i++) {
    pending_dir *d = &x->dirs[i];
    int fd;
    if (!d->rel[0]) {
      fd = openat(x->roots[d->root].fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) return sys_fail(e, "openat root", errno);
    } else {
      int dir_fd;
      const char *name;
      int rc = resolve_parent(x, d->root, d->rel, &dir_fd, &name);
      if (rc < 0) return false;
      if (rc > 0) return sys_fail(e, "openat parent", rc);
      fd = open_dir_at(dir_fd, name);
      int err = errno;
      close(dir_fd);
      if (fd < 0) {
        if (component_error(x, name, err) < 0) return false;
        return sys_fail(e, "openat directory", err);
      }
    }
    const char *step = NULL;
    int err = set_fd_metadata(fd, d->uid, d->gid, d->mode, &d->xattrs, d->mtime, &step);
    close(fd);
    if (err) return sys_fail(e, step, err);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------
// JS surface

static void extractor_free(extractor *x) {
  if (x->data_fd >= 0) close(x->data_fd);
  close_chain(x);
  free(x->chain);
  for (size_t i = 0; i < x->root_count; i++) {
    if (x->roots[i].fd >= 0) close(x->roots[i].fd);
    free(x->roots[i].name);
  }
  free(x->roots);
  for (size_t i = 0; i < x->dir_count; i++) {
    free(x->dirs[i].rel);
    xattrs_free(&x->dirs[i].xattrs);
  }
  free(x->dirs);
  xattrs_free(&x->data_xattrs);
  free(x->h.path.data);
  free(x->h.linkpath.data);
  free(x->h.xattr_raw.data);
  free(x->ext.data);
  free(x->pax.data);
  free(x->longname.data);
  free(x->longlink.data);
  free(x->entry_rel);
  free(x->refusal);
  for (size_t i = 0; i < x->implicit_count; i++) free(x->implicit[i]);
  free(x->implicit);
  free(x);
}

static void finalize_extractor(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  if (data) extractor_free(data);
}

static extractor *get_extractor(napi_env env, napi_value v) {
  return tx_get_external(env, v, "extractor: not an archive extraction");
}

// extractStart(rootNames: string[], rootFds: number[] (-1: check only), uidBase, idCount) -> extractor.
// The fds are duplicated; the caller keeps its own.
static napi_value js_extract_start(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], result;
  uint32_t count = 0, fd_count = 0, uid_base, id_count;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4 || napi_get_array_length(env, argv[0], &count) != napi_ok ||
      napi_get_array_length(env, argv[1], &fd_count) != napi_ok || count != fd_count) {
    return tx_type_error(env, "extractStart(rootNames, rootFds, uidBase, idCount)");
  }
  if (!tx_get_uint32(env, argv[2], "extractStart: uidBase", &uid_base) ||
      !tx_get_uint32(env, argv[3], "extractStart: idCount", &id_count)) {
    return NULL;
  }
  extractor *x = calloc(1, sizeof *x);
  if (!x || !(x->roots = calloc(count ? count : 1, sizeof *x->roots))) {
    free(x);
    return tx_throw(env, "malloc", ENOMEM);
  }
  x->data_fd = -1;
  x->chain_root = (size_t)-1;
  x->uid_base = uid_base;
  x->id_count = id_count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value name, fd;
    int32_t root_fd;
    napi_get_element(env, argv[0], i, &name);
    napi_get_element(env, argv[1], i, &fd);
    x->roots[i].fd = -1;
    x->root_count = i + 1;
    if (!tx_get_string(env, name, "extractStart: rootNames", &x->roots[i].name) ||
        !tx_get_int32(env, fd, "extractStart: rootFds", &root_fd)) {
      extractor_free(x);
      return NULL;
    }
    if (root_fd >= 0 && (x->roots[i].fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 3)) < 0) {
      int err = errno;
      extractor_free(x);
      return tx_throw(env, "extractStart: dup root fd", err);
    }
  }
  napi_create_external(env, x, finalize_extractor, NULL, &result);
  return result;
}

// extractStartLayer(rootFd, idCount) -> extractor in layer mode (see the top of this file): one root,
// owners kept as they are below idCount (the layer store is mounted idmapped later), others 65534.
static napi_value js_extract_start_layer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t root_fd;
  uint32_t id_count;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "extractStartLayer(rootFd, idCount)");
  if (!tx_get_int32(env, argv[0], "extractStartLayer: rootFd", &root_fd) ||
      !tx_get_uint32(env, argv[1], "extractStartLayer: idCount", &id_count)) {
    return NULL;
  }
  if (root_fd < 0 || id_count == 0) return tx_type_error(env, "extractStartLayer: rootFd must be an fd and idCount positive");
  extractor *x = calloc(1, sizeof *x);
  if (!x || !(x->roots = calloc(1, sizeof *x->roots)) || !(x->roots[0].name = strdup(""))) {
    if (x) free(x->roots);
    free(x);
    return tx_throw(env, "malloc", ENOMEM);
  }
  x->root_count = 1;
  x->layer = true;
  x->data_fd = -1;
  x->chain_root = (size_t)-1;
  x->id_count = id_count;
  if ((x->roots[0].fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 3)) < 0) {
    int err = errno;
    extractor_free(x);
    return tx_throw(env, "extractStartLayer: dup root fd", err);
  }
  napi_create_external(env, x, finalize_extractor, NULL, &result);
  return result;
}

static napi_value feed_result(napi_env env, extractor *x, size_t consumed, const char *status) {
  napi_value r, v;
  napi_create_object(env, &r);
  napi_create_double(env, (double)consumed, &v);
  napi_set_named_property(env, r, "consumed", v);
  napi_create_string_utf8(env, status, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, r, "status", v);
  napi_create_double(env, x->files, &v);
  napi_set_named_property(env, r, "files", v);
  napi_create_double(env, x->bytes, &v);
  napi_set_named_property(env, r, "bytes", v);
  if (x->refusal) {
    napi_create_string_utf8(env, x->refusal, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, r, "message", v);
  }
  return r;
}

// "extract <call> <entry path>" for a failed system call, the path cut at 300 bytes.
static const char *sys_error_step(const extractor *x, const sys_error *e, char *buf, size_t size) {
  snprintf(buf, size, "extract %s %.*s", e->step ? e->step : "", (int)(x->h.path.len > 300 ? 300 : x->h.path.len),
           x->h.path.data ? x->h.path.data : "");
  return buf;
}

static napi_value throw_sys(napi_env env, extractor *x, sys_error *e) {
  char step[512];
  return tx_throw(env, sys_error_step(x, e, step, sizeof step), e->err);
}

// What a feed that consumed with result rc tells the caller.
static const char *feed_status(const extractor *x, int rc) {
  if (rc < 0 || x->refusal) return "refused";
  if (rc > 0) return "xattrs";
  return x->state == S_END ? "end" : "more";
}

// (extractor, chunk, offset), checked the same way for extractFeed and extractFeedAsync; NULL after a throw.
static extractor *feed_args(napi_env env, napi_callback_info info, const char *fn, napi_value argv[3], char **chunk,
                            size_t *len, uint32_t *offset) {
  size_t argc = 3;
  char what[96];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  snprintf(what, sizeof what, "%s(extractor, chunk, offset)", fn);
  if (argc < 3) return tx_type_error(env, what), NULL;
  extractor *x = get_extractor(env, argv[0]);
  if (!x) return NULL;
  snprintf(what, sizeof what, "%s: chunk must be a Buffer", fn);
  if (napi_get_buffer_info(env, argv[1], (void **)chunk, len) != napi_ok) return tx_type_error(env, what), NULL;
  snprintf(what, sizeof what, "%s: offset", fn);
  if (!tx_get_uint32(env, argv[2], what, offset)) return NULL;
  snprintf(what, sizeof what, "%s: offset beyond the chunk", fn);
  if (*offset > *len) return tx_type_error(env, what), NULL;
  snprintf(what, sizeof what, "%s: the extractor is busy or waits for extractResume", fn);
  if (x->waiting || x->busy) return tx_type_error(env, what), NULL;
  return x;
}

// extractFeed(extractor, chunk, offset) -> { consumed, status: 'more'|'end'|'xattrs'|'refused', files, bytes,
// message? }. 'xattrs': extractPending() tells which entry; extractResume() goes on; feed the rest after.
static napi_value js_extract_feed(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char *chunk;
  size_t len;
  uint32_t offset;
  extractor *x = feed_args(env, info, "extractFeed", argv, &chunk, &len, &offset);
  if (!x) return NULL;
  if (x->refusal) return feed_result(env, x, 0, "refused");
  size_t off = offset;
  sys_error e = {0};
  int rc = consume(x, chunk, len, &off, &e);
  if (e.err) return throw_sys(env, x, &e);
  return feed_result(env, x, off - offset, feed_status(x, rc));
}

// extractFeedAsync: the same feed on a libuv worker, so the caller decompresses the next chunk meanwhile.
typedef struct {
  extractor *x;
  napi_ref self, chunk_ref;
  const char *chunk;
  size_t len, offset, off;
  int rc;
  sys_error e;
  napi_deferred deferred;
  napi_async_work work;
} feed_job;

static void feed_execute(napi_env env, void *data) {
  (void)env;
  feed_job *job = data;
  job->off = job->offset;
  job->rc = consume(job->x, job->chunk, job->len, &job->off, &job->e);
}

static void close_fds(extractor *x);

// extractImplicitDirs(extractor) -> string[]: layer mode, the parents made without an entry of their own.
static napi_value js_extract_implicit_dirs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], list, v;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  extractor *x = argc ? get_extractor(env, argv[0]) : NULL;
  if (!x) return NULL;
  if (x->busy) return tx_type_error(env, "extractImplicitDirs: a feed is still running");
  napi_create_array_with_length(env, x->implicit_count, &list);
  for (size_t i = 0; i < x->implicit_count; i++) {
    napi_create_string_utf8(env, x->implicit[i], NAPI_AUTO_LENGTH, &v);
    napi_set_element(env, list, (uint32_t)i, v);
  }
  return list;
}

static void feed_complete(napi_env env, napi_status status, void *data) {
  feed_job *job = data;
  extractor *x = job->x;
  x->busy = false;
  if (status != napi_ok) {
    napi_reject_deferred(env, job->deferred, tx_native_error(env, "extract feed", ECANCELED));
  } else if (job->e.err) {
    char step[512];
    napi_reject_deferred(env, job->deferred, tx_native_error(env, sys_error_step(x, &job->e, step, sizeof step), job->e.err));
  } else {
    napi_resolve_deferred(env, job->deferred, feed_result(env, x, job->off - job->offset, feed_status(x, job->rc)));
  }
  if (x->close_requested) close_fds(x);
  napi_delete_reference(env, job->chunk_ref);
  napi_delete_reference(env, job->self);
  napi_delete_async_work(env, job->work);
  free(job);
}

// extractFeedAsync(extractor, chunk, offset) -> Promise<result>: extractFeed on a worker thread. The
// chunk must not change until the promise settles; no other call may use the extractor meanwhile.
static napi_value js_extract_feed_async(napi_env env, napi_callback_info info) {
  napi_value argv[3], promise, name;
  char *chunk;
  size_t len;
  uint32_t offset;
  extractor *x = feed_args(env, info, "extractFeedAsync", argv, &chunk, &len, &offset);
  if (!x) return NULL;
  feed_job *job = calloc(1, sizeof *job);
  if (!job) return tx_throw(env, "malloc", ENOMEM);
  job->x = x;
  job->chunk = chunk;
  job->len = len;
  job->offset = offset;
  napi_create_reference(env, argv[0], 1, &job->self);
  napi_create_reference(env, argv[1], 1, &job->chunk_ref);
  napi_create_promise(env, &job->deferred, &promise);
  if (x->refusal) {
    napi_resolve_deferred(env, job->deferred, feed_result(env, x, 0, "refused"));
    napi_delete_reference(env, job->chunk_ref);
    napi_delete_reference(env, job->self);
    free(job);
    return promise;
  }
  napi_create_string_utf8(env, "tetrix:extractFeed", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, feed_execute, feed_complete, job, &job->work);
  x->busy = true;
  napi_queue_async_work(env, job->work);
  return promise;
}

// extractPending(extractor) -> { path, root, kind: 'file'|'directory', xattrs: [name, Buffer][],
// metacopySize (-1: none), size } of the entry waiting for the xattr policy.
static napi_value js_extract_pending(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], r, v, list;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  extractor *x = argc ? get_extractor(env, argv[0]) : NULL;
  if (!x) return NULL;
  if (!x->waiting || x->busy) return tx_type_error(env, "extractPending: no entry waits");
  header_t *h = &x->h;
  napi_create_object(env, &r);
  napi_create_string_utf8(env, h->path.data, h->path.len, &v);
  napi_set_named_property(env, r, "path", v);
  napi_create_string_utf8(env, x->roots[x->entry_root].name, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, r, "root", v);
  napi_create_string_utf8(env, h->type == T_DIR ? "directory" : "file", NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, r, "kind", v);
  napi_create_double(env, h->metacopy_size, &v);
  napi_set_named_property(env, r, "metacopySize", v);
  napi_create_double(env, h->size, &v);
  napi_set_named_property(env, r, "size", v);
  napi_create_array_with_length(env, h->xattr_count, &list);
  size_t off = 0;
  for (uint32_t i = 0; i < h->xattr_count; i++) {
    const char *name = h->xattr_raw.data + off;
    off += strlen(name) + 1;
    uint32_t vl;
    memcpy(&vl, h->xattr_raw.data + off, sizeof vl);
    off += sizeof vl;
    napi_value pair, k, val;
    napi_create_array_with_length(env, 2, &pair);
    napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &k);
    napi_create_buffer_copy(env, vl, h->xattr_raw.data + off, NULL, &val);
    off += vl;
    napi_set_element(env, pair, 0, k);
    napi_set_element(env, pair, 1, val);
    napi_set_element(env, list, i, pair);
  }
  napi_set_named_property(env, r, "xattrs", list);
  return r;
}

// extractResume(extractor, xattrs: [name, Buffer][]): the waiting entry, with the host values the policy
// produced. Returns the same result shape as extractFeed with consumed 0.
static napi_value js_extract_resume(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "extractResume(extractor, xattrs)");
  extractor *x = get_extractor(env, argv[0]);
  if (!x) return NULL;
  if (!x->waiting || x->busy) return tx_type_error(env, "extractResume: no entry waits");
  uint32_t count = 0;
  if (napi_get_array_length(env, argv[1], &count) != napi_ok) return tx_type_error(env, "extractResume: xattrs must be an array");
  xattr_list list = {calloc(count ? count : 1, sizeof(xattr_t)), 0};
  if (!list.items) return tx_throw(env, "malloc", ENOMEM);
  for (uint32_t i = 0; i < count; i++) {
    napi_value pair, k, v;
    void *data;
    size_t len;
    napi_get_element(env, argv[1], i, &pair);
    napi_get_element(env, pair, 0, &k);
    napi_get_element(env, pair, 1, &v);
    xattr_t *a = &list.items[list.count];
    if (!tx_get_string(env, k, "extractResume: xattr name", &a->name)) {
      xattrs_free(&list);
      return NULL;
    }
    list.count++;
    if (napi_get_buffer_info(env, v, &data, &len) != napi_ok || !(a->value = malloc(len ? len : 1))) {
      xattrs_free(&list);
      return tx_type_error(env, "extractResume: xattr value must be a Buffer");
    }
    memcpy(a->value, data, len);
    a->len = len;
  }
  x->waiting = false;
  char *rel = x->entry_rel;
  x->entry_rel = NULL;
  sys_error e = {0};
  bool ok = act_on_entry(x, x->entry_root, rel, &list, &e);
  free(rel);
  xattrs_free(&list);
  if (e.err) return throw_sys(env, x, &e);
  if (!ok || x->refusal) return feed_result(env, x, 0, "refused");
  return feed_result(env, x, 0, x->state == S_END ? "end" : "more");
}

// extractFinish(extractor) -> same shape as extractFeed: 'end' once directory metadata is applied, or
// 'refused' when the archive ended before its end-of-archive marker.
static napi_value js_extract_finish(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  extractor *x = argc ? get_extractor(env, argv[0]) : NULL;
  if (!x) return NULL;
  if (x->busy) return tx_type_error(env, "extractFinish: a feed is still running");
  if (x->state != S_END) refuse_plain(x, "archive: ends before its end-of-archive marker");
  if (x->refusal) return feed_result(env, x, 0, "refused");
  close_chain(x);
  sys_error e = {0};
  bool ok = apply_dir_metadata(x, &e);
  if (e.err) return throw_sys(env, x, &e);
  return feed_result(env, x, 0, ok && !x->refusal ? "end" : "refused");
}

static void close_fds(extractor *x) {
  x->close_requested = false;
  if (x->data_fd >= 0) close(x->data_fd);
  x->data_fd = -1;
  close_chain(x);
  for (size_t i = 0; i < x->root_count; i++) {
    if (x->roots[i].fd >= 0) close(x->roots[i].fd);
    x->roots[i].fd = -1;
  }
  if (!x->refusal) x->refusal = strdup("archive: extraction closed");
}

// extractClose(extractor): closes every fd it holds (once a running feed completes).
static napi_value js_extract_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  extractor *x = argc ? get_extractor(env, argv[0]) : NULL;
  if (!x) return NULL;
  if (x->busy) x->close_requested = true;
  else close_fds(x);
  return tx_undefined(env);
}

void tx_register_extract(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "extractStart", js_extract_start);
  tx_set_function(env, addon, "extractStartLayer", js_extract_start_layer);
  tx_set_function(env, addon, "extractFeed", js_extract_feed);
  tx_set_function(env, addon, "extractFeedAsync", js_extract_feed_async);
  tx_set_function(env, addon, "extractPending", js_extract_pending);
  tx_set_function(env, addon, "extractResume", js_extract_resume);
  tx_set_function(env, addon, "extractFinish", js_extract_finish);
  tx_set_function(env, addon, "extractImplicitDirs", js_extract_implicit_dirs);
  tx_set_function(env, addon, "extractClose", js_extract_close);
}
