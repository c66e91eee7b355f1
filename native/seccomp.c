// Seccomp profiles compiled to classic BPF with libseccomp, once per profile, inside the daemon. The
// workspace child never links libseccomp: it installs these bytes with seccomp(2) as its last step before
// exec (see spawn.c), so nothing there allocates or can fail half-way.
//
// The JS side (src/sandbox/seccomp.ts) validates the profile JSON and flattens it into rules; this file
// only resolves names and turns rules into a program. Compiling runs on a libuv worker thread.
#define _GNU_SOURCE
#include "tetrix.h"

#include <errno.h>
#include <linux/filter.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SC_MAX_ARCHES 24
#define SC_MAX_ARGS 6
// Highest syscall number scanned when looking for the last one libseccomp knows on an arch.
#define SC_SCAN_LIMIT 4096

typedef struct {
  uint32_t index;
  enum scmp_compare op;
  uint64_t value;      // the datum, or the mask for SCMP_CMP_MASKED_EQ (OCI order)
  uint64_t value_two;  // the datum for SCMP_CMP_MASKED_EQ
} sc_arg;

typedef struct {
  char *syscall;
  uint32_t action;
  uint32_t nargs;
  sc_arg args[SC_MAX_ARGS];
} sc_rule;

typedef struct {
  // input, parsed on the JS thread
  uint32_t default_action;
  uint32_t arches[SC_MAX_ARCHES];
  uint32_t narches;
  sc_rule *rules;
  uint32_t nrules;
  bool enosys_unknown;
  // output of the worker
  int err;
  char step[160];
  int64_t failed_rule;  // index into rules, -1 when the failure is not about one rule
  struct sock_filter *prog;
  size_t prog_len;
  // plumbing
  napi_deferred deferred;
  napi_async_work work;
} compile_job;

// ---- names the profile format uses -> libseccomp values --------------------------------------------

static bool parse_action(const char *name, uint32_t errno_ret, uint32_t *out) {
  if (!strcmp(name, "SCMP_ACT_ALLOW")) *out = SCMP_ACT_ALLOW;
  else if (!strcmp(name, "SCMP_ACT_ERRNO")) *out = SCMP_ACT_ERRNO(errno_ret);
  else if (!strcmp(name, "SCMP_ACT_KILL") || !strcmp(name, "SCMP_ACT_KILL_THREAD")) *out = SCMP_ACT_KILL_THREAD;
  else if (!strcmp(name, "SCMP_ACT_KILL_PROCESS")) *out = SCMP_ACT_KILL_PROCESS;
  else if (!strcmp(name, "SCMP_ACT_TRAP")) *out = SCMP_ACT_TRAP;
  else if (!strcmp(name, "SCMP_ACT_TRACE")) *out = SCMP_ACT_TRACE(errno_ret);
  else if (!strcmp(name, "SCMP_ACT_LOG")) *out = SCMP_ACT_LOG;
  else return false;  // SCMP_ACT_NOTIFY needs a listener the daemon does not run
  return true;
}

static bool parse_op(const char *name, enum scmp_compare *out) {
  static const struct { const char *name; enum scmp_compare op; } ops[] = {
      {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
      {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
      {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ},
  };
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
    if (!strcmp(name, ops[i].name)) {
      *out = ops[i].op;
      return true;
    }
  }
  return false;
}

// ---- reading the JS spec ---------------------------------------------------------------------------

static bool get_uint64(napi_env env, napi_value v, const char *what, uint64_t *out) {
  double d;
  napi_valuetype t;
  // The JS side refuses values above 2^53, so a double carries them exactly.
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok ||
      d < 0 || d > 9007199254740991.0 || d != (double)(uint64_t)d) {
    tx_type_error(env, what);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

static bool get_named_string(napi_env env, napi_value obj, const char *name, const char *what, char **out) {
  napi_value v;
  return tx_get_prop(env, obj, name, &v) && tx_get_string(env, v, what, out);
}

static bool get_named_uint32(napi_env env, napi_value obj, const char *name, const char *what, uint32_t *out) {
  napi_value v;
  return tx_get_prop(env, obj, name, &v) && tx_get_uint32(env, v, what, out);
}

static bool get_array(napi_env env, napi_value obj, const char *name, const char *what, napi_value *arr,
                      uint32_t *len) {
  bool is_array = false;
  if (!tx_get_prop(env, obj, name, arr) || napi_is_array(env, *arr, &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, *arr, len) != napi_ok) {
    tx_type_error(env, what);
    return false;
  }
  return true;
}

// Throws a TypeError unless one is already pending; returns false for `return fail_type(...)`.
static bool fail_type(napi_env env, const char *what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) tx_type_error(env, what);
  return false;
}

static bool read_arg(napi_env env, napi_value obj, sc_arg *arg) {
  char *op = NULL;
  napi_value v;
  bool ok = get_named_uint32(env, obj, "index", "seccompCompile: args[].index must be 0..5", &arg->index) &&
            get_named_string(env, obj, "op", "seccompCompile: args[].op must be a string", &op) &&
            tx_get_prop(env, obj, "value", &v) &&
            get_uint64(env, v, "seccompCompile: args[].value must be an integer in 0..2^53", &arg->value) &&
            tx_get_prop(env, obj, "valueTwo", &v) &&
            get_uint64(env, v, "seccompCompile: args[].valueTwo must be an integer in 0..2^53", &arg->value_two);
  if (ok && arg->index >= SC_MAX_ARGS) ok = fail_type(env, "seccompCompile: args[].index must be 0..5");
  if (ok && !parse_op(op, &arg->op)) ok = fail_type(env, "seccompCompile: args[].op is not a comparison");
  free(op);
  return ok || fail_type(env, "seccompCompile: bad args[]");
}

static bool read_rule(napi_env env, napi_value obj, sc_rule *rule) {
  char *action = NULL;
  uint32_t errno_ret = 0, nargs = 0;
  napi_value args;
  bool ok = get_named_string(env, obj, "syscall", "seccompCompile: rules[].syscall must be a string", &rule->syscall) &&
            get_named_string(env, obj, "action", "seccompCompile: rules[].action must be a string", &action) &&
            get_named_uint32(env, obj, "errno", "seccompCompile: rules[].errno must be an integer", &errno_ret) &&
            get_array(env, obj, "args", "seccompCompile: rules[].args must be an array", &args, &nargs);
  if (ok && !parse_action(action, errno_ret, &rule->action))
    ok = fail_type(env, "seccompCompile: rules[].action is not a supported action");
  if (ok && nargs > SC_MAX_ARGS) ok = fail_type(env, "seccompCompile: at most 6 args a rule");
  for (uint32_t i = 0; ok && i < nargs; i++) {
    napi_value a;
    ok = napi_get_element(env, args, i, &a) == napi_ok && read_arg(env, a, &rule->args[i]);
  }
  rule->nargs = ok ? nargs : 0;
  free(action);
  return ok || fail_type(env, "seccompCompile: bad rules[]");
}

static void free_job(compile_job *job) {
  for (uint32_t i = 0; job->rules && i < job->nrules; i++) free(job->rules[i].syscall);
  free(job->rules);
  free(job->prog);
  free(job);
}

static bool read_arches(napi_env env, napi_value arr, uint32_t len, compile_job *job) {
  if (len > SC_MAX_ARCHES) return fail_type(env, "seccompCompile: too many arches");
  for (uint32_t i = 0; i < len; i++) {
    char *name = NULL;
    napi_value v;
    if (napi_get_element(env, arr, i, &v) != napi_ok ||
        !tx_get_string(env, v, "seccompCompile: arches[] must be strings", &name))
      return fail_type(env, "seccompCompile: arches[] must be strings");
    job->arches[i] = seccomp_arch_resolve_name(name);
    free(name);
    if (job->arches[i] == 0) return fail_type(env, "seccompCompile: arches[] names an arch libseccomp does not know");
  }
  job->narches = len;
  return true;
}

static bool read_rules(napi_env env, napi_value arr, uint32_t len, compile_job *job) {
  job->rules = calloc(len ? len : 1, sizeof *job->rules);
  if (!job->rules) return tx_throw(env, "malloc", ENOMEM), false;
  job->nrules = len;
  for (uint32_t i = 0; i < len; i++) {
    napi_value v;
    if (napi_get_element(env, arr, i, &v) != napi_ok || !read_rule(env, v, &job->rules[i]))
      return fail_type(env, "seccompCompile: bad rules[]");
  }
  return true;
}

// spec: { defaultAction, defaultErrno, arches: string[] (libseccomp names), rules: Rule[], enosysUnknown }
static compile_job *read_spec(napi_env env, napi_value spec) {
  compile_job *job = calloc(1, sizeof *job);
  if (!job) return tx_throw(env, "malloc", ENOMEM), NULL;
  job->failed_rule = -1;
  char *action = NULL;
  uint32_t errno_ret = 0, narches = 0, nrules = 0;
  napi_value arches, rules, v;
  bool ok = get_named_string(env, spec, "defaultAction", "seccompCompile: defaultAction must be a string", &action) &&
            get_named_uint32(env, spec, "defaultErrno", "seccompCompile: defaultErrno must be an integer", &errno_ret) &&
            get_array(env, spec, "arches", "seccompCompile: arches must be an array", &arches, &narches) &&
            get_array(env, spec, "rules", "seccompCompile: rules must be an array", &rules, &nrules) &&
            tx_get_prop(env, spec, "enosysUnknown", &v) && napi_get_value_bool(env, v, &job->enosys_unknown) == napi_ok;
  if (!ok) fail_type(env, "seccompCompile: enosysUnknown must be a boolean");
  if (ok && !parse_action(action, errno_ret, &job->default_action))
    ok = fail_type(env, "seccompCompile: defaultAction is not a supported action");
  ok = ok && read_arches(env, arches, narches, job) && read_rules(env, rules, nrules, job);
  free(action);
  if (ok) return job;
  free_job(job);
  return NULL;
}

// ---- compiling (worker thread: no napi calls) ------------------------------------------------------

static void job_fail(compile_job *job, const char *step, int err, int64_t rule) {
  snprintf(job->step, sizeof job->step, "%s", step);
  job->err = err;
  job->failed_rule = rule;
}

// Comparisons arrive as the kernel reads them: libseccomp compares all 64 bits of a register, so the JS
// side has already turned each one on an int argument into SCMP_CMP_MASKED_EQ on its low bits
// (src/sandbox/seccomp-args.ts); what is left here are comparisons on real 64-bit arguments.
static int add_rule(scmp_filter_ctx ctx, const sc_rule *rule) {
  struct scmp_arg_cmp cmps[SC_MAX_ARGS];
  for (uint32_t i = 0; i < rule->nargs; i++) {
    cmps[i] = (struct scmp_arg_cmp){
        .arg = rule->args[i].index,
        .op = rule->args[i].op,
        .datum_a = rule->args[i].value,
        .datum_b = rule->args[i].value_two,
    };
  }
  int nr = seccomp_syscall_resolve_name(rule->syscall);
  if (nr == __NR_SCMP_ERROR) return -ENOENT;
  // Not the _exact variant: a name absent on the native arch (chown32 on x86_64) still lands on the
  // sub-arches that have it, and socketcall/ipc multiplexing is handled for us.
  return seccomp_rule_add_array(ctx, rule->action, nr, rule->nargs, cmps);
}

// The highest syscall number libseccomp can name on an arch; 0 when it knows none.
static int last_known_syscall(uint32_t arch) {
  int last = 0;
  for (int nr = 0; nr < SC_SCAN_LIMIT; nr++) {
    char *name = seccomp_syscall_resolve_num_arch(arch, nr);
    if (name) {
      last = nr;
      free(name);
    }
  }
  return last;
}

// A syscall newer than this libseccomp cannot be named in a profile, so without help it would get the
// default action (EPERM) and libc would not fall back the way it does on ENOSYS (fchmodat2, clone3's
// cousins). Like runc's patchbpf, answer numbers above the last known one with ENOSYS. The prefix is
// self-contained: each block tests one arch and falls through to the next; the last falls into the
// libseccomp program, which reloads what it needs. Jumps in that program are relative, so it is unchanged.
enum { ENOSYS_BLOCK = 6 };
static size_t enosys_prefix(const uint32_t *arches, size_t narches, struct sock_filter *out) {
  size_t n = 0;
  for (size_t i = 0; i < narches; i++) {
    uint32_t arch = arches[i];
    if (arch == SCMP_ARCH_X32) continue;  // x32 numbers carry the 0x40000000 bit; libseccomp handles them
    int last = last_known_syscall(arch);
    if (last == 0) continue;
    struct sock_filter block[ENOSYS_BLOCK] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4 /* offsetof(struct seccomp_data, arch) */),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 0, ENOSYS_BLOCK - 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0 /* offsetof(struct seccomp_data, nr) */),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x40000000 /* __X32_SYSCALL_BIT */, ENOSYS_BLOCK - 4, 0),
        BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, (uint32_t)last, 0, ENOSYS_BLOCK - 5),
        BPF_STMT(BPF_RET | BPF_K, SCMP_ACT_ERRNO(ENOSYS)),
    };
    memcpy(out + n, block, sizeof block);
    n += ENOSYS_BLOCK;
  }
  return n;
}

static int export_program(compile_job *job, scmp_filter_ctx ctx) {
  int fd = memfd_create("tetrix-seccomp", MFD_CLOEXEC);
  if (fd < 0) return job_fail(job, "memfd_create", errno, -1), -1;
  int rc = seccomp_export_bpf(ctx, fd);
  if (rc < 0) {
    close(fd);
    return job_fail(job, "seccomp_export_bpf", -rc, -1), -1;
  }
  off_t size = lseek(fd, 0, SEEK_END);
  if (size <= 0 || size % sizeof(struct sock_filter) != 0) {
    close(fd);
    return job_fail(job, "seccomp_export_bpf: size", EINVAL, -1), -1;
  }
  size_t body = (size_t)size / sizeof(struct sock_filter);
  uint32_t arches[SC_MAX_ARCHES + 1];
  size_t narches = 0;
  arches[narches++] = seccomp_arch_native();
  for (uint32_t i = 0; i < job->narches; i++)
    if (job->arches[i] != arches[0]) arches[narches++] = job->arches[i];
  size_t room = body + (job->enosys_unknown ? narches * ENOSYS_BLOCK : 0);
  job->prog = calloc(room, sizeof(struct sock_filter));
  if (!job->prog) {
    close(fd);
    return job_fail(job, "malloc", ENOMEM, -1), -1;
  }
  size_t prefix = job->enosys_unknown ? enosys_prefix(arches, narches, job->prog) : 0;
  ssize_t got = pread(fd, job->prog + prefix, body * sizeof(struct sock_filter), 0);
  close(fd);
  if (got != (ssize_t)(body * sizeof(struct sock_filter))) return job_fail(job, "pread", got < 0 ? errno : EIO, -1), -1;
  job->prog_len = prefix + body;
  if (job->prog_len > BPF_MAXINSNS) return job_fail(job, "seccomp program longer than BPF_MAXINSNS", E2BIG, -1), -1;
  return 0;
}

static void compile_execute(napi_env env, void *data) {
  (void)env;
  compile_job *job = data;
  scmp_filter_ctx ctx = seccomp_init(job->default_action);
  if (!ctx) return job_fail(job, "seccomp_init", EINVAL, -1);
  int rc;
  for (uint32_t i = 0; i < job->narches; i++) {
    rc = seccomp_arch_add(ctx, job->arches[i]);
    if (rc < 0 && rc != -EEXIST) {
      job_fail(job, "seccomp_arch_add", -rc, -1);
      goto out;
    }
  }
  // The binary-tree layout keeps a 300-syscall allowlist at a few comparisons a call. libseccomp <= 2.5.4
  // misbehaves with it on an empty rule set, hence the threshold (runc uses the same).
  if (job->nrules > 32 && (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)) < 0) {
    job_fail(job, "seccomp_attr_set(SCMP_FLTATR_CTL_OPTIMIZE)", -rc, -1);
    goto out;
  }
  for (uint32_t i = 0; i < job->nrules; i++) {
    rc = add_rule(ctx, &job->rules[i]);
    if (rc < 0) {
      job_fail(job, rc == -ENOENT ? "seccomp_syscall_resolve_name" : "seccomp_rule_add", -rc, i);
      goto out;
    }
  }
  export_program(job, ctx);
out:
  seccomp_release(ctx);
}

static void compile_complete(napi_env env, napi_status status, void *data) {
  compile_job *job = data;
  napi_value result;
  if (status != napi_ok && job->err == 0) job_fail(job, "seccomp compile", ECANCELED, -1);
  if (job->err == 0) {
    void *bytes;
    size_t len = job->prog_len * sizeof(struct sock_filter);
    napi_create_buffer_copy(env, len, job->prog, &bytes, &result);
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    napi_value error = tx_native_error(env, job->step, job->err), rule;
    napi_create_int64(env, job->failed_rule, &rule);
    napi_set_named_property(env, error, "rule", rule);
    napi_reject_deferred(env, job->deferred, error);
  }
  napi_delete_async_work(env, job->work);
  free_job(job);
}

// seccompCompile(spec) -> Promise<Buffer>: the struct sock_filter[] for seccomp(SECCOMP_SET_MODE_FILTER).
// Rejects with NativeError whose .rule is the index of the rule that failed (-1: not a rule).
static napi_value js_compile(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1) return tx_type_error(env, "seccompCompile(spec)");
  compile_job *job = read_spec(env, argv[0]);
  if (!job) return NULL;
  return tx_queue_work(env, "tetrix.seccompCompile", compile_execute, compile_complete, job, &job->deferred, &job->work);
}

// seccompResolveSyscall(name, arch) -> number. arch is a libseccomp name ("x86_64", "x86", "aarch64").
// >= 0: the syscall's number there. -1: libseccomp has never heard of the name. Other negative values are
// libseccomp's pseudo numbers: -101..-120 socketcall and -201..-224 ipc multiplexed calls, below -10000 a
// syscall that exists on other arches only.
static napi_value js_resolve_syscall(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result = NULL;
  char *name = NULL, *arch_name = NULL;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2) return tx_type_error(env, "seccompResolveSyscall(name, arch)");
  if (tx_get_string(env, argv[0], "seccompResolveSyscall: name must be a string", &name) &&
      tx_get_string(env, argv[1], "seccompResolveSyscall: arch must be a string", &arch_name)) {
    uint32_t arch = seccomp_arch_resolve_name(arch_name);
    if (arch == 0) {
      tx_throw(env, "seccomp_arch_resolve_name", EINVAL);
    } else {
      napi_create_int32(env, seccomp_syscall_resolve_name_arch(arch, name), &result);
    }
  }
  free(name);
  free(arch_name);
  return result;
}

// seccompNativeArch() -> the libseccomp name of the arch this daemon runs on ("x86_64").
static napi_value js_native_arch(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  const char *name = "unknown";
  switch (seccomp_arch_native()) {
    case SCMP_ARCH_X86_64: name = "x86_64"; break;
    case SCMP_ARCH_X86: name = "x86"; break;
    case SCMP_ARCH_X32: name = "x32"; break;
    case SCMP_ARCH_AARCH64: name = "aarch64"; break;
    case SCMP_ARCH_ARM: name = "arm"; break;
    case SCMP_ARCH_PPC64LE: name = "ppc64le"; break;
    case SCMP_ARCH_PPC64: name = "ppc64"; break;
    case SCMP_ARCH_S390X: name = "s390x"; break;
    case SCMP_ARCH_RISCV64: name = "riscv64"; break;
  }
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &result);
  return result;
}

void tx_register_seccomp(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "seccompCompile", js_compile);
  tx_set_function(env, addon, "seccompResolveSyscall", js_resolve_syscall);
  tx_set_function(env, addon, "seccompNativeArch", js_native_arch);
}
