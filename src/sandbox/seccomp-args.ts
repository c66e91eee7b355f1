// How wide each syscall argument is to the kernel, and argument comparisons compiled on those bits only.
//
// seccomp sees six 64-bit registers, but a syscall declared with an int argument reads only its low 32
// bits (the SYSCALL_DEFINE wrapper casts the register to the declared type), and an umode_t only the low
// 16. libseccomp compares all 64, so a rule "socket: family != AF_VSOCK" let socket(0x100000028) through,
// and the kernel then created an AF_VSOCK socket. The same shape bypassed flatpak's TIOCSTI filter
// through ioctl's unsigned int cmd (CVE-2017-5226, fixed there with a 32-bit mask). So every comparison
// on an argument narrower than 64 bits is compiled as masked equalities on exactly the bits the kernel
// reads (libseccomp 2.5 has no 32-bit comparison: its SCMP_CMP32 only truncates the datum):
//   EQ v          (a & W) == v
//   MASKED_EQ m v (a & m & W) == v
//   NE v          OR over each bit i: bit i of a differs from bit i of v          (w terms)
//   LT v          OR over each set bit i of v: a's bits above i equal v's, bit i 0 (popcount(v) terms)
//   GT v          OR over each clear bit i of v: the same with bit i 1
//   LE v, GE v    LT v+1, GT v-1 (or always true at the ends of the range)
// Comparisons on 64-bit arguments (pointers, sizes, offsets, unsigned long flags) keep libseccomp's
// 64-bit ones, as in Docker's format.

/** An argument comparison in the profile format (for MASKED_EQ, value is the mask and valueTwo the datum). */
export interface ArgComparison {
  index: number;
  op: string;
  value: number;
  valueTwo: number;
}

/**
 * The width of each argument of each syscall, in bits. Generated from the kernel's own signatures
 * (tracefs events/syscalls/sys_enter_<name>/format on Linux 6.18 x86_64; see
 * test/sandbox/fixtures/syscall-signatures.ts, and test/sandbox/seccomp.test.ts checks it against the
 * running kernel). The generic syscalls have the same signatures on aarch64.
 */
const ARG_WIDTHS: Readonly<Record<string, readonly number[]>> = {
  accept: [32, 64, 64],
  accept4: [32, 64, 64, 32],
  access: [64, 32],
  acct: [64],
  add_key: [64, 64, 64, 64, 32],
  adjtimex: [64],
  alarm: [32],
  arch_prctl: [32, 64],
  bind: [32, 64, 32],
  bpf: [32, 64, 32],
  brk: [64],
  cachestat: [32, 64, 64, 32],
  capget: [64, 64],
  capset: [64, 64],
  chdir: [64],
  chmod: [64, 16],
  chown: [64, 32, 32],
  chroot: [64],
  clock_adjtime: [32, 64],
  clock_getres: [32, 64],
  clock_gettime: [32, 64],
  clock_nanosleep: [32, 32, 64, 64],
  clock_settime: [32, 64],
  clone3: [64, 64],
  close: [32],
  close_range: [32, 32, 32],
  connect: [32, 64, 32],
  copy_file_range: [32, 64, 32, 64, 64, 32],
  creat: [64, 16],
  dup: [32],
  dup2: [32, 32],
  dup3: [32, 32, 32],
  epoll_create: [32],
  epoll_create1: [32],
  epoll_ctl: [32, 32, 32, 64],
  epoll_pwait: [32, 64, 32, 32, 64, 64],
  epoll_pwait2: [32, 64, 32, 64, 64, 64],
  epoll_wait: [32, 64, 32, 32],
  eventfd: [32],
  eventfd2: [32, 32],
  execve: [64, 64, 64],
  execveat: [32, 64, 64, 64, 32],
  exit: [32],
  exit_group: [32],
  faccessat: [32, 64, 32],
  faccessat2: [32, 64, 32, 32],
  fadvise64: [32, 64, 64, 32],
  fallocate: [32, 32, 64, 64],
  fanotify_init: [32, 32],
  fanotify_mark: [32, 32, 64, 32, 64],
  fchdir: [32],
  fchmod: [32, 16],
  fchmodat: [32, 64, 16],
  fchmodat2: [32, 64, 16, 32],
  fchown: [32, 32, 32],
  fchownat: [32, 64, 32, 32, 32],
  fcntl: [32, 32, 64],
  fdatasync: [32],
  fgetxattr: [32, 64, 64, 64],
  file_getattr: [32, 64, 64, 64, 32],
  file_setattr: [32, 64, 64, 64, 32],
  flistxattr: [32, 64, 64],
  flock: [32, 32],
  fork: [],
  fremovexattr: [32, 64],
  fsconfig: [32, 32, 64, 64, 32],
  fsetxattr: [32, 64, 64, 64, 32],
  fsmount: [32, 32, 32],
  fsopen: [64, 32],
  fspick: [32, 64, 32],
  fstatfs: [32, 64],
  fsync: [32],
  ftruncate: [32, 64],
  futex: [64, 32, 32, 64, 64, 32],
  futex_requeue: [64, 32, 32, 32],
  futex_wait: [64, 64, 64, 32, 64, 32],
  futex_waitv: [64, 32, 32, 64, 32],
  futex_wake: [64, 64, 32, 32],
  futimesat: [32, 64, 64],
  get_mempolicy: [64, 64, 64, 64, 64],
  get_robust_list: [32, 64, 64],
  getcpu: [64, 64, 64],
  getcwd: [64, 64],
  getdents: [32, 64, 32],
  getdents64: [32, 64, 32],
  getegid: [],
  geteuid: [],
  getgid: [],
  getgroups: [32, 64],
  getitimer: [32, 64],
  getpeername: [32, 64, 64],
  getpgid: [32],
  getpgrp: [],
  getpid: [],
  getppid: [],
  getpriority: [32, 32],
  getrandom: [64, 64, 32],
  getresgid: [64, 64, 64],
  getresuid: [64, 64, 64],
  getrlimit: [32, 64],
  getrusage: [32, 64],
  getsid: [32],
  getsockname: [32, 64, 64],
  getsockopt: [32, 32, 32, 64, 64],
  gettid: [],
  gettimeofday: [64, 64],
  getuid: [],
  getxattr: [64, 64, 64, 64],
  getxattrat: [32, 64, 32, 64, 64, 64],
  inotify_add_watch: [32, 64, 32],
  inotify_init: [],
  inotify_init1: [32],
  inotify_rm_watch: [32, 32],
  io_cancel: [64, 64, 64],
  io_destroy: [64],
  io_getevents: [64, 64, 64, 64, 64],
  io_pgetevents: [64, 64, 64, 64, 64, 64],
  io_setup: [32, 64],
  io_submit: [64, 64, 64],
  io_uring_enter: [32, 32, 32, 32, 64, 64],
  io_uring_register: [32, 32, 64, 32],
  io_uring_setup: [32, 64],
  ioctl: [32, 32, 64],
  ioperm: [64, 64, 32],
  iopl: [32],
  ioprio_get: [32, 32],
  ioprio_set: [32, 32, 32],
  kcmp: [32, 32, 32, 64, 64],
  keyctl: [32, 64, 64, 64, 64],
  kill: [32, 32],
  landlock_add_rule: [32, 32, 64, 32],
  landlock_create_ruleset: [64, 64, 32],
  landlock_restrict_self: [32, 32],
  lchown: [64, 32, 32],
  lgetxattr: [64, 64, 64, 64],
  link: [64, 64],
  linkat: [32, 64, 32, 64, 32],
  listen: [32, 32],
  listmount: [64, 64, 64, 32],
  listxattr: [64, 64, 64],
  listxattrat: [32, 64, 32, 64, 64],
  llistxattr: [64, 64, 64],
  lremovexattr: [64, 64],
  lseek: [32, 64, 32],
  lsetxattr: [64, 64, 64, 64, 32],
  lsm_get_self_attr: [32, 64, 64, 32],
  lsm_list_modules: [64, 64, 32],
  lsm_set_self_attr: [32, 64, 32, 32],
  madvise: [64, 64, 32],
  mbind: [64, 64, 64, 64, 64, 32],
  membarrier: [32, 32, 32],
  memfd_create: [64, 32],
  memfd_secret: [32],
  migrate_pages: [32, 64, 64, 64],
  mincore: [64, 64, 64],
  mkdir: [64, 16],
  mkdirat: [32, 64, 16],
  mknod: [64, 16, 32],
  mknodat: [32, 64, 16, 32],
  mlock: [64, 64],
  mlock2: [64, 64, 32],
  mlockall: [32],
  mmap: [64, 64, 64, 64, 64, 64],
  modify_ldt: [32, 64, 64],
  mount: [64, 64, 64, 64, 64],
  mount_setattr: [32, 64, 32, 64, 64],
  move_mount: [32, 64, 32, 64, 32],
  move_pages: [32, 64, 64, 64, 64, 32],
  mprotect: [64, 64, 64],
  mq_getsetattr: [32, 64, 64],
  mq_notify: [32, 64],
  mq_open: [64, 32, 16, 64],
  mq_timedreceive: [32, 64, 64, 64, 64],
  mq_timedsend: [32, 64, 64, 32, 64],
  mq_unlink: [64],
  mremap: [64, 64, 64, 64, 64],
  mseal: [64, 64, 64],
  msgctl: [32, 32, 64],
  msgget: [32, 32],
  msgrcv: [32, 64, 64, 64, 32],
  msgsnd: [32, 64, 64, 32],
  msync: [64, 64, 32],
  munlock: [64, 64],
  munlockall: [],
  munmap: [64, 64],
  name_to_handle_at: [32, 64, 64, 64, 32],
  nanosleep: [64, 64],
  fstat: [32, 64],
  newfstatat: [32, 64, 64, 32],
  lstat: [64, 64],
  stat: [64, 64],
  uname: [64],
  open: [64, 32, 16],
  open_by_handle_at: [32, 64, 32],
  open_tree: [32, 64, 32],
  open_tree_attr: [32, 64, 32, 64, 64],
  openat: [32, 64, 32, 16],
  openat2: [32, 64, 64, 64],
  pause: [],
  perf_event_open: [64, 32, 32, 32, 64],
  personality: [32],
  pidfd_getfd: [32, 32, 32],
  pidfd_open: [32, 32],
  pidfd_send_signal: [32, 32, 64, 32],
  pipe: [64],
  pipe2: [64, 32],
  pivot_root: [64, 64],
  pkey_alloc: [64, 64],
  pkey_free: [32],
  pkey_mprotect: [64, 64, 64, 32],
  poll: [64, 32, 32],
  ppoll: [64, 32, 64, 64, 64],
  prctl: [32, 64, 64, 64, 64],
  pread64: [32, 64, 64, 64],
  preadv: [64, 64, 64, 64, 64],
  preadv2: [64, 64, 64, 64, 64, 32],
  prlimit64: [32, 32, 64, 64],
  process_madvise: [32, 64, 64, 32, 32],
  process_mrelease: [32, 32],
  process_vm_readv: [32, 64, 64, 64, 64, 64],
  process_vm_writev: [32, 64, 64, 64, 64, 64],
  pselect6: [32, 64, 64, 64, 64, 64],
  ptrace: [64, 64, 64, 64],
  pwrite64: [32, 64, 64, 64],
  pwritev: [64, 64, 64, 64, 64],
  pwritev2: [64, 64, 64, 64, 64, 32],
  quotactl: [32, 64, 32, 64],
  quotactl_fd: [32, 32, 32, 64],
  read: [32, 64, 64],
  readahead: [32, 64, 64],
  readlink: [64, 64, 32],
  readlinkat: [32, 64, 64, 32],
  readv: [64, 64, 64],
  reboot: [32, 32, 32, 64],
  recvfrom: [32, 64, 64, 32, 64, 64],
  recvmmsg: [32, 64, 32, 32, 64],
  recvmsg: [32, 64, 32],
  remap_file_pages: [64, 64, 64, 64, 64],
  removexattr: [64, 64],
  removexattrat: [32, 64, 32, 64],
  rename: [64, 64],
  renameat: [32, 64, 32, 64],
  renameat2: [32, 64, 32, 64, 32],
  request_key: [64, 64, 64, 32],
  restart_syscall: [],
  rmdir: [64],
  rseq: [64, 32, 32, 32],
  rt_sigaction: [32, 64, 64, 64],
  rt_sigpending: [64, 64],
  rt_sigprocmask: [32, 64, 64, 64],
  rt_sigqueueinfo: [32, 32, 64],
  rt_sigreturn: [],
  rt_sigsuspend: [64, 64],
  rt_sigtimedwait: [64, 64, 64, 64],
  rt_tgsigqueueinfo: [32, 32, 32, 64],
  sched_get_priority_max: [32],
  sched_get_priority_min: [32],
  sched_getaffinity: [32, 32, 64],
  sched_getattr: [32, 64, 32, 32],
  sched_getparam: [32, 64],
  sched_getscheduler: [32],
  sched_rr_get_interval: [32, 64],
  sched_setaffinity: [32, 32, 64],
  sched_setattr: [32, 64, 32],
  sched_setparam: [32, 64],
  sched_setscheduler: [32, 32, 64],
  sched_yield: [],
  seccomp: [32, 32, 64],
  select: [32, 64, 64, 64, 64],
  semctl: [32, 32, 32, 64],
  semget: [32, 32, 32],
  semop: [32, 64, 32],
  semtimedop: [32, 64, 32, 64],
  sendfile: [32, 32, 64, 64],
  sendmmsg: [32, 64, 32, 32],
  sendmsg: [32, 64, 32],
  sendto: [32, 64, 64, 32, 64, 32],
  set_mempolicy: [32, 64, 64],
  set_mempolicy_home_node: [64, 64, 64, 64],
  set_robust_list: [64, 64],
  set_tid_address: [64],
  setdomainname: [64, 32],
  setfsgid: [32],
  setfsuid: [32],
  setgid: [32],
  setgroups: [32, 64],
  sethostname: [64, 32],
  setitimer: [32, 64, 64],
  setns: [32, 32],
  setpgid: [32, 32],
  setpriority: [32, 32, 32],
  setregid: [32, 32],
  setresgid: [32, 32, 32],
  setresuid: [32, 32, 32],
  setreuid: [32, 32],
  setrlimit: [32, 64],
  setsid: [],
  setsockopt: [32, 32, 32, 64, 32],
  settimeofday: [64, 64],
  setuid: [32],
  setxattr: [64, 64, 64, 64, 32],
  setxattrat: [32, 64, 32, 64, 64, 64],
  shmat: [32, 64, 32],
  shmctl: [32, 32, 64],
  shmdt: [64],
  shmget: [32, 64, 32],
  shutdown: [32, 32],
  sigaltstack: [64, 64],
  signalfd: [32, 64, 64],
  signalfd4: [32, 64, 64, 32],
  socket: [32, 32, 32],
  socketpair: [32, 32, 32, 64],
  splice: [32, 64, 32, 64, 64, 32],
  statfs: [64, 64],
  statmount: [64, 64, 64, 32],
  statx: [32, 64, 32, 32, 64],
  swapoff: [64],
  swapon: [64, 32],
  symlink: [64, 64],
  symlinkat: [64, 32, 64],
  sync: [],
  sync_file_range: [32, 64, 64, 32],
  syncfs: [32],
  sysfs: [32, 64, 64],
  sysinfo: [64],
  syslog: [32, 64, 32],
  tee: [32, 32, 64, 32],
  tgkill: [32, 32, 32],
  time: [64],
  timer_create: [32, 64, 64],
  timer_delete: [32],
  timer_getoverrun: [32],
  timer_gettime: [32, 64],
  timer_settime: [32, 32, 64, 64],
  timerfd_create: [32, 32],
  timerfd_gettime: [32, 64],
  timerfd_settime: [32, 32, 64, 64],
  times: [64],
  tkill: [32, 32],
  truncate: [64, 64],
  umask: [32],
  umount2: [64, 32],
  unlink: [64],
  unlinkat: [32, 64, 32],
  unshare: [64],
  uprobe: [],
  uretprobe: [],
  userfaultfd: [32],
  ustat: [32, 64],
  utime: [64, 64],
  utimensat: [32, 64, 64, 32],
  utimes: [64, 64],
  vfork: [],
  vhangup: [],
  vmsplice: [32, 64, 64, 32],
  wait4: [32, 64, 32, 64],
  waitid: [32, 32, 64, 32, 64],
  write: [32, 64, 64],
  writev: [64, 64, 64],
  // Built without tracepoints here (modules, kexec); from their SYSCALL_DEFINEs.
  init_module: [64, 64, 64],
  finit_module: [32, 64, 32],
  delete_module: [64, 32],
  kexec_load: [64, 64, 64, 64],
  kexec_file_load: [32, 32, 64, 64, 64],
  lookup_dcookie: [64, 64, 64],
  uselib: [64],
  // Declared unsigned long, but kernel/fork.c reads lower_32_bits(clone_flags) (since 5.3, when clone3
  // took the upper half), so a flag test must look at the low 32 bits alone.
  clone: [32, 64, 64, 64, 64],
};

/** The widths of a syscall's arguments, or undefined when the table does not know the syscall. */
export function argWidths(syscall: string): readonly number[] | undefined {
  return Object.prototype.hasOwnProperty.call(ARG_WIDTHS, syscall) ? ARG_WIDTHS[syscall] : undefined;
}

/** (a & mask) == value, as libseccomp's SCMP_CMP_MASKED_EQ takes it. */
export interface MaskedTerm {
  mask: number;
  value: number;
}

const ALWAYS: MaskedTerm = { mask: 0, value: 0 };

/** All ones in the low `width` bits, as an unsigned number (width <= 32). */
function ones(width: number): number {
  return width === 32 ? 0xffffffff : 2 ** width - 1;
}

/** Bits i..width-1. */
function bitsFrom(i: number, width: number): number {
  return (ones(width) - ones(i)) >>> 0;
}

const bit = (i: number): number => 2 ** i;
const isSet = (v: number, i: number): boolean => Math.floor(v / bit(i)) % 2 === 1;

/** a < v on `width` bits: a agrees with v above some set bit i of v and has 0 there. */
function lessThan(v: number, width: number): MaskedTerm[] {
  const terms: MaskedTerm[] = [];
  for (let i = width - 1; i >= 0; i--) {
    if (!isSet(v, i)) continue;
    const mask = bitsFrom(i, width);
    terms.push({ mask, value: ((v & mask) >>> 0) - bit(i) });
  }
  return terms;
}

/** a > v on `width` bits: a agrees with v above some clear bit i of v and has 1 there. */
function greaterThan(v: number, width: number): MaskedTerm[] {
  const terms: MaskedTerm[] = [];
  for (let i = width - 1; i >= 0; i--) {
    if (isSet(v, i)) continue;
    const mask = bitsFrom(i, width);
    terms.push({ mask, value: ((v & mask) >>> 0) + bit(i) });
  }
  return terms;
}

/**
 * The comparison on the low `width` bits (<= 32) of an argument, as masked equalities of which any one
 * matching means the comparison holds. [] never holds; [ALWAYS] always does. The caller has checked that
 * the compared value fits in `width` bits.
 */
export function maskedTerms(op: string, value: number, valueTwo: number, width: number): MaskedTerm[] {
  const all = ones(width);
  switch (op) {
    case 'SCMP_CMP_EQ':
      return [{ mask: all, value }];
    case 'SCMP_CMP_MASKED_EQ':
      return [{ mask: (value & all) >>> 0, value: valueTwo }];
    case 'SCMP_CMP_NE':
      return Array.from({ length: width }, (_, i) => ({ mask: bit(i), value: isSet(value, i) ? 0 : bit(i) }));
    case 'SCMP_CMP_LT':
      return lessThan(value, width);
    case 'SCMP_CMP_LE':
      return value === all ? [ALWAYS] : lessThan(value + 1, width);
    case 'SCMP_CMP_GT':
      return greaterThan(value, width);
    case 'SCMP_CMP_GE':
      return value === 0 ? [ALWAYS] : greaterThan(value - 1, width);
    default:
      throw new Error(`unknown comparison ${op}`);
  }
}

/** The value that must fit in the argument's width: the datum (valueTwo) of a masked comparison, else value. */
export function comparedValue(arg: ArgComparison): number {
  return arg.op === 'SCMP_CMP_MASKED_EQ' ? arg.valueTwo : arg.value;
}

/** Past this many libseccomp rules for one profile rule, the filter would grow too long to be useful. */
export const MAX_EXPANDED_RULES = 256;

/**
 * One profile rule's comparisons (all ANDed) as the alternatives libseccomp gets: each alternative is a
 * list of comparisons ANDed, and the rule matches when any alternative does. Arguments narrower than 64
 * bits become masked equalities; [] means the rule can never match. Throws when the product of the
 * alternatives passes MAX_EXPANDED_RULES.
 */
export function expandComparisons(args: readonly ArgComparison[], widths: readonly number[]): ArgComparison[][] {
  let alternatives: ArgComparison[][] = [[]];
  for (const arg of args) {
    const width = widths[arg.index];
    const options: ArgComparison[] =
      width >= 64
        ? [arg]
        : maskedTerms(arg.op, arg.value, arg.valueTwo, width).map((t) => ({
            index: arg.index,
            op: 'SCMP_CMP_MASKED_EQ',
            value: t.mask,
            valueTwo: t.value,
          }));
    if (alternatives.length * options.length > MAX_EXPANDED_RULES) {
      throw new RangeError(`these comparisons need ${alternatives.length * options.length} rules on narrow arguments (at most ${MAX_EXPANDED_RULES})`);
    }
    alternatives = alternatives.flatMap((alt) => options.map((o) => [...alt, o]));
  }
  return alternatives;
}
