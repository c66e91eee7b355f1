// Workspace networking: rtnetlink (links, addresses, routes) and libnftables, run on the addon's worker
// threads so the event loop never waits on the kernel. Every failure names its step and errno.
//
// Namespaces: a netlink socket belongs to the network namespace of the thread that created it
// (netlink(7)), so each operation enters the namespace it needs with setns(2) on its own worker thread,
// opens its sockets there, and goes back before doing anything else. Only this thread moves
// (setns(CLONE_NEWNET) is per thread); if it cannot go back, the process aborts rather than leave a
// pool thread in a workspace's namespace.
#define _GNU_SOURCE
#include "tetrix.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <nftables/libnftables.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NET_MAX_ADDRS 4
#define NET_MAX_PORTS 4096

/* ---------- errors: the step and the errno ---------- */

struct net_err {
  char step[96];
  int errnum;
  char *detail; // nft's own message, owned
};

static int fail(struct net_err *e, const char *step, int errnum) {
  snprintf(e->step, sizeof e->step, "%s", step);
  e->errnum = errnum;
  return -1;
}

/* ---------- network namespaces ---------- */

// Opens the namespace to act in: a path (a bind mount or /proc/<pid>/ns/net) or, when pid > 0, that
// process's namespace. Returns -1 with errno set.
static int open_netns(const char *path, int pid) {
  char buf[64];
  if (pid > 0) {
    snprintf(buf, sizeof buf, "/proc/%d/ns/net", pid);
    path = buf;
  }
  return open(path, O_RDONLY | O_CLOEXEC);
}

struct ns_switch {
  int home; // this thread's namespace before the switch, or -1 when nothing was switched
};

static int enter_netns(struct ns_switch *sw, int target_fd, struct net_err *e, const char *step) {
  sw->home = -1;
  if (target_fd < 0) return 0;
  sw->home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (sw->home < 0) return fail(e, "open /proc/thread-self/ns/net", errno);
  if (setns(target_fd, CLONE_NEWNET) < 0) {
    int err = errno;
    close(sw->home);
    sw->home = -1;
    return fail(e, step, err);
  }
  return 0;
}

static void leave_netns(struct ns_switch *sw) {
  if (sw->home < 0) return;
  if (setns(sw->home, CLONE_NEWNET) < 0) {
    fprintf(stderr, "tetrix net: cannot return a worker thread to its network namespace (errno %d)\n", errno);
    abort();
  }
  close(sw->home);
  sw->home = -1;
}

/* ---------- rtnetlink messages ---------- */

struct nlreq {
  struct nlmsghdr *h;
  char buf[4096] __attribute__((aligned(NLMSG_ALIGNTO)));
};

static void *req_init(struct nlreq *r, uint16_t type, uint16_t flags, size_t hdrlen) {
  memset(r->buf, 0, sizeof r->buf);
  r->h = (struct nlmsghdr *)r->buf;
  r->h->nlmsg_type = type;
  r->h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
  r->h->nlmsg_len = NLMSG_LENGTH(hdrlen);
  return NLMSG_DATA(r->h);
}

static struct rtattr *put_attr(struct nlreq *r, uint16_t type, const void *data, size_t len) {
  struct rtattr *a = (struct rtattr *)(r->buf + NLMSG_ALIGN(r->h->nlmsg_len));
  a->rta_type = type;
  a->rta_len = RTA_LENGTH(len);
  if (len) memcpy(RTA_DATA(a), data, len);
  r->h->nlmsg_len = NLMSG_ALIGN(r->h->nlmsg_len) + RTA_ALIGN(a->rta_len);
  return a;
}

static void put_u32(struct nlreq *r, uint16_t type, uint32_t v) { put_attr(r, type, &v, sizeof v); }
static void put_u8(struct nlreq *r, uint16_t type, uint8_t v) { put_attr(r, type, &v, sizeof v); }
static void put_str(struct nlreq *r, uint16_t type, const char *s) { put_attr(r, type, s, strlen(s) + 1); }
static struct rtattr *nest_begin(struct nlreq *r, uint16_t type) { return put_attr(r, type | NLA_F_NESTED, NULL, 0); }
static void nest_end(struct nlreq *r, struct rtattr *a) { a->rta_len = (unsigned short)((r->buf + r->h->nlmsg_len) - (char *)a); }

static int nl_open(void) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return -1;
  int one = 1;
  // Extended acks name the failing attribute; harmless if the kernel ignores it.
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  return fd;
}

static uint32_t next_seq(void) {
  static uint32_t seq;
  return __atomic_add_fetch(&seq, 1, __ATOMIC_RELAXED);
}

// Sends one request and waits for its ack. Returns 0 or a positive errno.
static int nl_talk(int fd, struct nlreq *r) {
  r->h->nlmsg_seq = next_seq();
  if (send(fd, r->buf, r->h->nlmsg_len, 0) < 0) return errno;
  char rbuf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
  for (;;) {
    ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)rbuf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r->h->nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) return -((struct nlmsgerr *)NLMSG_DATA(h))->error;
    }
  }
}

// The value of one attribute in a link message, or NULL.
static struct rtattr *link_attr(struct nlmsghdr *h, uint16_t type) {
  struct ifinfomsg *ifi = NLMSG_DATA(h);
  int len = (int)IFLA_PAYLOAD(h);
  for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
    if ((a->rta_type & ~NLA_F_NESTED) == type) return a;
  return NULL;
}

// Looks a link up by name: its index (0 when absent) and, if kind is given, its IFLA_INFO_KIND.
static int link_lookup(int fd, const char *name, int *index, char *kind, size_t kindlen) {
  struct nlreq r;
  struct ifinfomsg *ifi = req_init(&r, RTM_GETLINK, 0, sizeof *ifi);
  ifi->ifi_family = AF_UNSPEC;
  put_str(&r, IFLA_IFNAME, name);
  r.h->nlmsg_seq = next_seq();
  *index = 0;
  if (kind) kind[0] = 0;
  if (send(fd, r.buf, r.h->nlmsg_len, 0) < 0) return errno;
  char rbuf[16384] __attribute__((aligned(NLMSG_ALIGNTO)));
  for (;;) {
    ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)rbuf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r.h->nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        int err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
        return err == ENODEV ? 0 : err; // an ack (0) ends the exchange too
      }
      if (h->nlmsg_type != RTM_NEWLINK) continue;
      *index = ((struct ifinfomsg *)NLMSG_DATA(h))->ifi_index;
      struct rtattr *info = link_attr(h, IFLA_LINKINFO);
      if (kind && info) {
        int len = (int)RTA_PAYLOAD(info);
        for (struct rtattr *a = RTA_DATA(info); RTA_OK(a, len); a = RTA_NEXT(a, len))
          if (a->rta_type == IFLA_INFO_KIND) snprintf(kind, kindlen, "%s", (char *)RTA_DATA(a));
      }
    }
  }
}

static int link_set_up(int fd, int index) {
  struct nlreq r;
  struct ifinfomsg *ifi = req_init(&r, RTM_NEWLINK, 0, sizeof *ifi);
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;
  return nl_talk(fd, &r);
}

// bridge-link(8) "isolated on": an isolated port talks only to non-isolated ports (the bridge itself),
// so workspaces never see each other's frames, without br_netfilter.
static int port_set_isolated(int fd, int index) {
  struct nlreq r;
  struct ifinfomsg *ifi = req_init(&r, RTM_SETLINK, 0, sizeof *ifi);
  ifi->ifi_family = AF_BRIDGE;
  ifi->ifi_index = index;
  struct rtattr *nest = nest_begin(&r, IFLA_PROTINFO);
  put_u8(&r, IFLA_BRPORT_ISOLATED, 1);
  put_u8(&r, IFLA_BRPORT_LEARNING, 1);
  nest_end(&r, nest);
  return nl_talk(fd, &r);
}

static int link_delete(int fd, const char *name) {
  struct nlreq r;
  struct ifinfomsg *ifi = req_init(&r, RTM_DELLINK, 0, sizeof *ifi);
  ifi->ifi_family = AF_UNSPEC;
  put_str(&r, IFLA_IFNAME, name);
  return nl_talk(fd, &r);
}

/* ---------- addresses ---------- */

struct cidr {
  int family;
  unsigned char addr[16];
  int prefix;
};

static size_t addr_len(int family) { return family == AF_INET ? 4 : 16; }

// "10.88.0.5/16" or "fd00::5/64"; a bare address (for gateways) gets the full prefix.
static bool parse_cidr(const char *s, struct cidr *c) {
  char buf[64];
  snprintf(buf, sizeof buf, "%s", s);
  char *slash = strchr(buf, '/');
  if (slash) *slash = 0;
  c->family = strchr(buf, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(c->family, buf, c->addr) != 1) return false;
  int max = c->family == AF_INET ? 32 : 128;
  c->prefix = max;
  if (slash) {
    char *end;
    long p = strtol(slash + 1, &end, 10);
    if (*end || p < 0 || p > max) return false;
    c->prefix = (int)p;
  }
  return true;
}

static int addr_add(int fd, int index, const struct cidr *c) {
  struct nlreq r;
  struct ifaddrmsg *ifa = req_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, sizeof *ifa);
  ifa->ifa_family = (unsigned char)c->family;
  ifa->ifa_prefixlen = (unsigned char)c->prefix;
  ifa->ifa_index = (unsigned)index;
  size_t len = addr_len(c->family);
  put_attr(&r, IFA_LOCAL, c->addr, len);
  put_attr(&r, IFA_ADDRESS, c->addr, len);
  if (c->family == AF_INET && c->prefix < 31) {
    unsigned char brd[4];
    uint32_t host = c->prefix ? (0xffffffffu >> c->prefix) : 0xffffffffu;
    uint32_t a;
    memcpy(&a, c->addr, 4);
    a = htonl(ntohl(a) | host);
    memcpy(brd, &a, 4);
    put_attr(&r, IFA_BROADCAST, brd, 4);
  }
  // No duplicate address detection: the pool guarantees uniqueness, and a tentative address would
  // make the first connections of a fresh workspace fail.
  if (c->family == AF_INET6) put_u32(&r, IFA_FLAGS, IFA_F_NODAD);
  return nl_talk(fd, &r);
}

static int route_add_default(int fd, int index, const struct cidr *gw) {
  struct nlreq r;
  struct rtmsg *rt = req_init(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, sizeof *rt);
  rt->rtm_family = (unsigned char)gw->family;
  rt->rtm_table = RT_TABLE_MAIN;
  rt->rtm_protocol = RTPROT_BOOT;
  rt->rtm_scope = RT_SCOPE_UNIVERSE;
  rt->rtm_type = RTN_UNICAST;
  put_attr(&r, RTA_GATEWAY, gw->addr, addr_len(gw->family));
  put_u32(&r, RTA_OIF, (uint32_t)index);
  return nl_talk(fd, &r);
}

static bool parse_mac(const char *s, unsigned char mac[6]) {
  unsigned int b[6];
  char tail;
  if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6) return false;
  for (int i = 0; i < 6; i++) {
    if (b[i] > 255) return false;
    mac[i] = (unsigned char)b[i];
  }
  return true;
}

/* ---------- sysctl ---------- */

// /proc/sys/net resolves against the opening thread's namespace, so this writes the node's setting.
static int write_sysctl(const char *path, const char *value) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n = write(fd, value, strlen(value));
  int err = n < 0 ? errno : 0;
  close(fd);
  return err;
}

/* ---------- operations (worker thread) ---------- */

struct net_op {
  // inputs
  int kind;
  char *netns;          // the node's namespace, or NULL for the thread's own
  char *name;           // bridge or host-side link name
  char *bridge;         // master for a new veth
  char *peer_name;      // the workspace side's name, eth0
  char *target_path;    // the workspace's namespace as a path...
  int target_pid;       // ...or a pid
  unsigned char mac[6]; // bridge or workspace-side address
  bool has_mac;
  unsigned mtu;
  struct cidr addrs[NET_MAX_ADDRS];
  int naddrs;
  struct cidr gateways[NET_MAX_ADDRS];
  int ngateways;
  bool forward4, forward6;
  char *script;
  bool json;
  // outputs
  bool existed;
  char *output;
  char **names;
  int nnames;
  struct net_err err;
  // N-API
  napi_async_work work;
  napi_deferred deferred;
};

enum { OP_ENSURE_BRIDGE, OP_ATTACH_VETH, OP_DELETE_LINK, OP_LIST_PORTS, OP_LOOPBACK_UP, OP_NFT, OP_NFT_RELEASE };

// Opens a netlink socket inside the node's namespace (op->netns) or the thread's own.
static int node_socket(struct net_op *op, struct net_err *e) {
  int nsfd = -1;
  if (op->netns) {
    nsfd = open_netns(op->netns, 0);
    if (nsfd < 0) return fail(e, "open node netns", errno);
  }
  struct ns_switch sw;
  if (enter_netns(&sw, nsfd, e, "setns node") < 0) {
    if (nsfd >= 0) close(nsfd);
    return -1;
  }
  int fd = nl_open();
  int err = errno;
  leave_netns(&sw);
  if (nsfd >= 0) close(nsfd);
  if (fd < 0) return fail(e, "socket NETLINK_ROUTE", err);
  return fd;
}

static int run_ensure_bridge(struct net_op *op) {
  struct net_err *e = &op->err;
  int fd = node_socket(op, e);
  if (fd < 0) return -1;
  int rc = -1, index = 0, err;
  char kind[32];
  if ((err = link_lookup(fd, op->name, &index, kind, sizeof kind))) { fail(e, "RTM_GETLINK bridge", err); goto out; }
  if (index && strcmp(kind, "bridge") != 0) { fail(e, "bridge name taken by a non-bridge link", EEXIST); goto out; }
  op->existed = index != 0;
  if (!index) {
    struct nlreq r;
    struct ifinfomsg *ifi = req_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof *ifi);
    ifi->ifi_family = AF_UNSPEC;
    put_str(&r, IFLA_IFNAME, op->name);
    // A fixed address: otherwise the bridge takes its lowest port's, and every workspace's ARP entry
    // for the gateway goes stale when that port leaves.
    if (op->has_mac) put_attr(&r, IFLA_ADDRESS, op->mac, 6);
    if (op->mtu) put_u32(&r, IFLA_MTU, op->mtu);
    struct rtattr *info = nest_begin(&r, IFLA_LINKINFO);
    put_str(&r, IFLA_INFO_KIND, "bridge");
    nest_end(&r, info);
    if ((err = nl_talk(fd, &r)) && err != EEXIST) { fail(e, "RTM_NEWLINK bridge", err); goto out; }
    if ((err = link_lookup(fd, op->name, &index, NULL, 0)) || !index) { fail(e, "RTM_GETLINK bridge", err ? err : ENODEV); goto out; }
  }
  for (int i = 0; i < op->naddrs; i++)
    if ((err = addr_add(fd, index, &op->addrs[i])) && err != EEXIST) { fail(e, "RTM_NEWADDR bridge", err); goto out; }
  if ((err = link_set_up(fd, index))) { fail(e, "RTM_NEWLINK bridge up", err); goto out; }
  rc = 0;
out:
  close(fd);
  if (rc < 0) return rc;
  // Forwarding is per namespace: this turns it on only where the bridge lives.
  int nsfd = op->netns ? open_netns(op->netns, 0) : -1;
  if (op->netns && nsfd < 0) return fail(e, "open node netns", errno);
  struct ns_switch sw;
  if (enter_netns(&sw, nsfd, e, "setns node") == 0) {
    if (op->forward4 && (err = write_sysctl("/proc/sys/net/ipv4/ip_forward", "1"))) rc = fail(e, "write net.ipv4.ip_forward", err);
    else if (op->forward6 && (err = write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1"))) rc = fail(e, "write net.ipv6.conf.all.forwarding", err);
    leave_netns(&sw);
  } else {
    rc = -1;
  }
  if (nsfd >= 0) close(nsfd);
  return rc;
}

// The workspace side, through a socket opened inside its namespace: lo up, then the peer (already
// named and addressed at L2 by the veth request) gets its addresses, comes up and gets default routes.
static int configure_workspace_side(struct net_op *op, int wsfd, struct net_err *e) {
  int err, index = 0;
  if ((err = link_set_up(wsfd, 1))) return fail(e, "workspace: lo up", err);
  if ((err = link_lookup(wsfd, op->peer_name, &index, NULL, 0)) || !index) return fail(e, "workspace: RTM_GETLINK peer", err ? err : ENODEV);
  if ((err = link_set_up(wsfd, index))) return fail(e, "workspace: peer up", err);
  for (int i = 0; i < op->naddrs; i++)
    if ((err = addr_add(wsfd, index, &op->addrs[i]))) return fail(e, "workspace: RTM_NEWADDR", err);
  for (int i = 0; i < op->ngateways; i++)
    if ((err = route_add_default(wsfd, index, &op->gateways[i]))) return fail(e, "workspace: RTM_NEWROUTE default", err);
  return 0;
}

static int create_veth(struct net_op *op, int fd, int master, int target_fd, struct net_err *e) {
  struct nlreq r;
  struct ifinfomsg *ifi = req_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof *ifi);
  ifi->ifi_family = AF_UNSPEC;
  put_str(&r, IFLA_IFNAME, op->name);
  put_u32(&r, IFLA_MASTER, (uint32_t)master);
  if (op->mtu) put_u32(&r, IFLA_MTU, op->mtu);
  struct rtattr *info = nest_begin(&r, IFLA_LINKINFO);
  put_str(&r, IFLA_INFO_KIND, "veth");
  struct rtattr *data = nest_begin(&r, IFLA_INFO_DATA);
  struct rtattr *peer = nest_begin(&r, VETH_INFO_PEER);
  // The peer is created directly inside the workspace's namespace under its final name: no move, no
  // rename, and it is never visible in the node's namespace.
  struct ifinfomsg pinfo = {.ifi_family = AF_UNSPEC};
  memcpy(r.buf + r.h->nlmsg_len, &pinfo, sizeof pinfo);
  r.h->nlmsg_len += NLMSG_ALIGN(sizeof pinfo);
  put_str(&r, IFLA_IFNAME, op->peer_name);
  put_u32(&r, IFLA_NET_NS_FD, (uint32_t)target_fd);
  if (op->has_mac) put_attr(&r, IFLA_ADDRESS, op->mac, 6);
  if (op->mtu) put_u32(&r, IFLA_MTU, op->mtu);
  nest_end(&r, peer);
  nest_end(&r, data);
  nest_end(&r, info);
  int err = nl_talk(fd, &r);
  return err ? fail(e, "RTM_NEWLINK veth", err) : 0;
}

static int run_attach_veth(struct net_op *op) {
  struct net_err *e = &op->err;
  int target_fd = open_netns(op->target_path, op->target_pid);
  if (target_fd < 0) return fail(e, "open workspace netns", errno);
  int fd = node_socket(op, e), wsfd = -1, rc = -1, err, master = 0, index = 0;
  bool created = false;
  if (fd < 0) goto out;
  struct ns_switch sw;
  if (enter_netns(&sw, target_fd, e, "setns workspace") < 0) goto out;
  wsfd = nl_open();
  err = errno;
  leave_netns(&sw);
  if (wsfd < 0) { fail(e, "workspace: socket NETLINK_ROUTE", err); goto out; }

  if ((err = link_lookup(fd, op->bridge, &master, NULL, 0)) || !master) { fail(e, "RTM_GETLINK bridge", err ? err : ENODEV); goto out; }
  if (create_veth(op, fd, master, target_fd, e) < 0) goto out;
  created = true;
  if ((err = link_lookup(fd, op->name, &index, NULL, 0)) || !index) { fail(e, "RTM_GETLINK veth", err ? err : ENODEV); goto out; }
  // Isolated before up: no frame passes while the port could still reach its neighbours.
  if ((err = port_set_isolated(fd, index))) { fail(e, "RTM_SETLINK brport isolated", err); goto out; }
  if ((err = link_set_up(fd, index))) { fail(e, "RTM_NEWLINK veth up", err); goto out; }
  if (configure_workspace_side(op, wsfd, e) < 0) goto out;
  rc = 0;
out:
  // Deleting the host side deletes its peer too: a failed attach leaves no half link behind.
  if (rc < 0 && created && fd >= 0) link_delete(fd, op->name);
  if (wsfd >= 0) close(wsfd);
  if (fd >= 0) close(fd);
  close(target_fd);
  return rc;
}

static int run_delete_link(struct net_op *op) {
  int fd = node_socket(op, &op->err);
  if (fd < 0) return -1;
  int err = link_delete(fd, op->name);
  close(fd);
  op->existed = err == 0;
  if (err && err != ENODEV) return fail(&op->err, "RTM_DELLINK", err);
  return 0;
}

static int run_loopback_up(struct net_op *op) {
  struct net_err *e = &op->err;
  int target_fd = open_netns(op->target_path, op->target_pid);
  if (target_fd < 0) return fail(e, "open workspace netns", errno);
  struct ns_switch sw;
  int rc = -1;
  if (enter_netns(&sw, target_fd, e, "setns workspace") == 0) {
    int fd = nl_open(), err = errno;
    leave_netns(&sw);
    if (fd < 0) fail(e, "workspace: socket NETLINK_ROUTE", err);
    else {
      if ((err = link_set_up(fd, 1))) fail(e, "workspace: lo up", err);
      else rc = 0;
      close(fd);
    }
  }
  close(target_fd);
  return rc;
}

// Names of the links enslaved to a bridge (a dump of all links, filtered here).
static int run_list_ports(struct net_op *op) {
  struct net_err *e = &op->err;
  int fd = node_socket(op, e);
  if (fd < 0) return -1;
  int rc = -1, err, master = 0;
  if ((err = link_lookup(fd, op->bridge, &master, NULL, 0))) { fail(e, "RTM_GETLINK bridge", err); goto out; }
  if (!master) { rc = 0; goto out; }
  struct nlreq r;
  struct ifinfomsg *ifi = req_init(&r, RTM_GETLINK, NLM_F_DUMP, sizeof *ifi);
  ifi->ifi_family = AF_UNSPEC;
  put_u32(&r, IFLA_MASTER, (uint32_t)master); // a filter the kernel applies to dumps (>= 4.18)
  r.h->nlmsg_flags &= (uint16_t)~NLM_F_ACK;
  r.h->nlmsg_seq = next_seq();
  if (send(fd, r.buf, r.h->nlmsg_len, 0) < 0) { fail(e, "RTM_GETLINK dump", errno); goto out; }
  int cap = 16;
  op->names = calloc((size_t)cap, sizeof *op->names);
  const size_t bufsize = 32768;
  char *buf = malloc(bufsize); // malloc's alignment satisfies NLMSG_ALIGNTO
  for (bool done = false; !done;) {
    ssize_t n = recv(fd, buf, bufsize, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(e, "RTM_GETLINK dump recv", errno);
      free(buf);
      goto out;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) { done = true; break; }
      if (h->nlmsg_type == NLMSG_ERROR) {
        fail(e, "RTM_GETLINK dump", -((struct nlmsgerr *)NLMSG_DATA(h))->error);
        free(buf);
        goto out;
      }
      struct rtattr *m = link_attr(h, IFLA_MASTER), *nm = link_attr(h, IFLA_IFNAME);
      if (!m || !nm || *(uint32_t *)RTA_DATA(m) != (uint32_t)master) continue;
      if (op->nnames == cap) {
        cap *= 2;
        op->names = realloc(op->names, (size_t)cap * sizeof *op->names);
      }
      op->names[op->nnames++] = strdup((char *)RTA_DATA(nm));
    }
  }
  free(buf);
  rc = 0;
out:
  close(fd);
  return rc;
}

// libnftables keeps global state in places (its symbol tables, gmp); one transaction at a time.
static pthread_mutex_t nft_lock = PTHREAD_MUTEX_INITIALIZER;

// One libnftables context per namespace, kept open. Closing an nfnetlink socket waits for the kernel
// to finish freeing deleted set elements (nft_rcv_nl_event flushes the destroy work, an RCU grace
// period: ~10 ms here), and a fresh context costs ~0.5 ms; a kept one costs neither.
#define NFT_CTX_SLOTS 16
static struct nft_slot {
  char *netns; // NULL for the process's own namespace
  struct nft_ctx *ctx;
  bool used;
} nft_slots[NFT_CTX_SLOTS];

static bool same_ns(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

// Called with nft_lock held and the thread inside the target namespace.
static struct nft_ctx *nft_ctx_for(const char *netns) {
  for (int i = 0; i < NFT_CTX_SLOTS; i++)
    if (nft_slots[i].used && same_ns(nft_slots[i].netns, netns)) return nft_slots[i].ctx;
  for (int i = 0; i < NFT_CTX_SLOTS; i++) {
    if (nft_slots[i].used) continue;
    struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!ctx) return NULL;
    nft_ctx_buffer_output(ctx);
    nft_ctx_buffer_error(ctx);
    nft_slots[i] = (struct nft_slot){.netns = netns ? strdup(netns) : NULL, .ctx = ctx, .used = true};
    return ctx;
  }
  return NULL;
}

static void nft_ctx_drop(const char *netns) {
  for (int i = 0; i < NFT_CTX_SLOTS; i++) {
    if (!nft_slots[i].used || !same_ns(nft_slots[i].netns, netns)) continue;
    nft_ctx_free(nft_slots[i].ctx);
    free(nft_slots[i].netns);
    nft_slots[i] = (struct nft_slot){0};
  }
}

static int run_nft(struct net_op *op) {
  struct net_err *e = &op->err;
  int nsfd = op->netns ? open_netns(op->netns, 0) : -1;
  if (op->netns && nsfd < 0) return fail(e, "open node netns", errno);
  struct ns_switch sw;
  if (enter_netns(&sw, nsfd, e, "setns node") < 0) {
    if (nsfd >= 0) close(nsfd);
    return -1;
  }
  int rc = 0;
  pthread_mutex_lock(&nft_lock);
  struct nft_ctx *ctx = nft_ctx_for(op->netns);
  if (!ctx) {
    rc = fail(e, "nft_ctx_new", ENOMEM);
  } else {
    nft_ctx_output_set_flags(ctx, op->json ? NFT_CTX_OUTPUT_JSON : 0);
    if (nft_run_cmd_from_buffer(ctx, op->script) != 0) {
      rc = fail(e, "nft", EINVAL);
      e->detail = strdup(nft_ctx_get_error_buffer(ctx));
    } else {
      op->output = strdup(nft_ctx_get_output_buffer(ctx));
    }
  }
  pthread_mutex_unlock(&nft_lock);
  leave_netns(&sw);
  if (nsfd >= 0) close(nsfd);
  return rc;
}

// Frees the kept context of a namespace (its socket holds the namespace alive).
static int run_nft_release(struct net_op *op) {
  pthread_mutex_lock(&nft_lock);
  nft_ctx_drop(op->netns);
  pthread_mutex_unlock(&nft_lock);
  return 0;
}

static void op_execute(napi_env env, void *data) {
  (void)env;
  struct net_op *op = data;
  switch (op->kind) {
    case OP_ENSURE_BRIDGE: run_ensure_bridge(op); break;
    case OP_ATTACH_VETH: run_attach_veth(op); break;
    case OP_DELETE_LINK: run_delete_link(op); break;
    case OP_LIST_PORTS: run_list_ports(op); break;
    case OP_LOOPBACK_UP: run_loopback_up(op); break;
    case OP_NFT: run_nft(op); break;
    case OP_NFT_RELEASE: run_nft_release(op); break;
  }
}

/* ---------- N-API: options in, a promise out ---------- */

static void op_free(struct net_op *op) {
  free(op->netns);
  free(op->name);
  free(op->bridge);
  free(op->peer_name);
  free(op->target_path);
  free(op->script);
  free(op->output);
  free(op->err.detail);
  for (int i = 0; i < op->nnames; i++) free(op->names[i]);
  free(op->names);
  free(op);
}

// A NativeError naming the step and errno; nft's own message, when there is one, goes into .detail
// and the message (it names the table, set or rule that failed, never a secret).
static napi_value make_error(napi_env env, const struct net_err *e) {
  napi_value err = tx_native_error(env, e->step, e->errnum), v;
  if (!e->detail) return err;
  char msg[1024];
  snprintf(msg, sizeof msg, "%s: %s: %s", e->step, tx_errno_name(e->errnum), e->detail);
  // Trailing newlines from nft's buffer read badly in logs.
  for (size_t n = strlen(msg); n && msg[n - 1] == '\n'; n--) msg[n - 1] = 0;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, err, "message", v);
  napi_create_string_utf8(env, e->detail, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, err, "detail", v);
  return err;
}

static void op_complete(napi_env env, napi_status status, void *data) {
  struct net_op *op = data;
  napi_value result;
  if (status != napi_ok && !op->err.step[0]) fail(&op->err, "napi async work", ECANCELED);
  if (op->err.step[0]) {
    napi_reject_deferred(env, op->deferred, make_error(env, &op->err));
  } else {
    switch (op->kind) {
      case OP_DELETE_LINK:
      case OP_ENSURE_BRIDGE: napi_get_boolean(env, op->existed, &result); break;
      case OP_NFT: napi_create_string_utf8(env, op->output ? op->output : "", NAPI_AUTO_LENGTH, &result); break;
      case OP_LIST_PORTS:
        napi_create_array_with_length(env, (size_t)op->nnames, &result);
        for (int i = 0; i < op->nnames; i++) {
          napi_value s;
          napi_create_string_utf8(env, op->names[i], NAPI_AUTO_LENGTH, &s);
          napi_set_element(env, result, (uint32_t)i, s);
        }
        break;
      default: napi_get_undefined(env, &result);
    }
    napi_resolve_deferred(env, op->deferred, result);
  }
  napi_delete_async_work(env, op->work);
  op_free(op);
}

// Reads an optional string property; returns NULL when absent, null or undefined.
static char *get_str(napi_env env, napi_value obj, const char *key) {
  napi_value v;
  napi_valuetype t;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok || t != napi_string) return NULL;
  size_t len;
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  char *s = malloc(len + 1);
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

static bool get_num(napi_env env, napi_value obj, const char *key, int64_t *out) {
  napi_value v;
  napi_valuetype t;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok || t != napi_number) return false;
  return napi_get_value_int64(env, v, out) == napi_ok;
}

static bool get_bool(napi_env env, napi_value obj, const char *key) {
  napi_value v;
  bool b = false;
  if (napi_get_named_property(env, obj, key, &v) == napi_ok) napi_get_value_bool(env, v, &b);
  return b;
}

// Reads an array of "addr[/prefix]" strings; false on a bad entry.
static bool get_cidrs(napi_env env, napi_value obj, const char *key, struct cidr *out, int *n) {
  napi_value arr;
  bool is_array = false;
  *n = 0;
  if (napi_get_named_property(env, obj, key, &arr) != napi_ok || napi_is_array(env, arr, &is_array) != napi_ok || !is_array) return true;
  uint32_t len;
  napi_get_array_length(env, arr, &len);
  if (len > NET_MAX_ADDRS) return false;
  for (uint32_t i = 0; i < len; i++) {
    napi_value v;
    char buf[64];
    size_t l;
    napi_get_element(env, arr, i, &v);
    if (napi_get_value_string_utf8(env, v, buf, sizeof buf, &l) != napi_ok || !parse_cidr(buf, &out[i])) return false;
  }
  *n = (int)len;
  return true;
}

static napi_value start_op(napi_env env, napi_callback_info info, int kind) {
  napi_value o;
  if (!tx_arg_of_type(env, info, napi_object, "net: an options object is required", &o)) return NULL;
  struct net_op *op = calloc(1, sizeof *op);
  op->kind = kind;
  op->netns = get_str(env, o, "netns");
  op->name = get_str(env, o, "name");
  op->bridge = get_str(env, o, "bridge");
  op->peer_name = get_str(env, o, "peerName");
  op->target_path = get_str(env, o, "targetPath");
  op->script = get_str(env, o, "script");
  op->json = get_bool(env, o, "json");
  op->forward4 = get_bool(env, o, "forwardIpv4");
  op->forward6 = get_bool(env, o, "forwardIpv6");
  int64_t num;
  if (get_num(env, o, "targetPid", &num)) op->target_pid = (int)num;
  if (get_num(env, o, "mtu", &num)) op->mtu = (unsigned)num;
  char *mac = get_str(env, o, "mac");
  const char *bad = NULL;
  if (mac) {
    op->has_mac = parse_mac(mac, op->mac);
    if (!op->has_mac) bad = "net: mac is not aa:bb:cc:dd:ee:ff";
    free(mac);
  }
  if (!get_cidrs(env, o, "addrs", op->addrs, &op->naddrs)) bad = "net: addrs must be up to 4 addr/prefix strings";
  if (!get_cidrs(env, o, "gateways", op->gateways, &op->ngateways)) bad = "net: gateways must be up to 4 addresses";
  bool need_name = kind == OP_ENSURE_BRIDGE || kind == OP_ATTACH_VETH || kind == OP_DELETE_LINK;
  if (need_name && (!op->name || strlen(op->name) >= IFNAMSIZ)) bad = "net: name must be 1-15 characters";
  if ((kind == OP_ATTACH_VETH || kind == OP_LIST_PORTS) && (!op->bridge || strlen(op->bridge) >= IFNAMSIZ)) bad = "net: bridge must be 1-15 characters";
  if (kind == OP_ATTACH_VETH && (!op->peer_name || strlen(op->peer_name) >= IFNAMSIZ)) bad = "net: peerName must be 1-15 characters";
  if ((kind == OP_ATTACH_VETH || kind == OP_LOOPBACK_UP) && !op->target_path && op->target_pid <= 0) bad = "net: targetPid or targetPath is required";
  if (kind == OP_NFT && !op->script) bad = "net: script is required";
  if (bad) {
    op_free(op);
    napi_throw_type_error(env, NULL, bad);
    return NULL;
  }
  return tx_queue_work(env, "tetrix-net", op_execute, op_complete, op, &op->deferred, &op->work);
}

static napi_value ensure_bridge(napi_env env, napi_callback_info info) { return start_op(env, info, OP_ENSURE_BRIDGE); }
static napi_value attach_veth(napi_env env, napi_callback_info info) { return start_op(env, info, OP_ATTACH_VETH); }
static napi_value delete_link(napi_env env, napi_callback_info info) { return start_op(env, info, OP_DELETE_LINK); }
static napi_value list_ports(napi_env env, napi_callback_info info) { return start_op(env, info, OP_LIST_PORTS); }
static napi_value loopback_up(napi_env env, napi_callback_info info) { return start_op(env, info, OP_LOOPBACK_UP); }
static napi_value nft_run(napi_env env, napi_callback_info info) { return start_op(env, info, OP_NFT); }
static napi_value nft_release(napi_env env, napi_callback_info info) { return start_op(env, info, OP_NFT_RELEASE); }

void tx_register_net(napi_env env, napi_value addon) {
  tx_set_function(env, addon, "netEnsureBridge", ensure_bridge);
  tx_set_function(env, addon, "netAttachVeth", attach_veth);
  tx_set_function(env, addon, "netDeleteLink", delete_link);
  tx_set_function(env, addon, "netListPorts", list_ports);
  tx_set_function(env, addon, "netLoopbackUp", loopback_up);
  tx_set_function(env, addon, "nftRun", nft_run);
  tx_set_function(env, addon, "nftRelease", nft_release);
}
