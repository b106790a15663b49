// SPDX-License-Identifier: GPL-2.0-only
//
// hostwatch's connection source: every TCP connection and listener, and every connected UDP
// socket, as the kernel makes it, with the process that made it. The agent's scans see what is
// open when they look; this sees what opened and closed between two looks.
//
// Rebuild with `agent/bpf/build.sh` (Debian: clang and libbpf-dev); the object it writes,
// agent/bpf/connections.bpf.o, is committed so that the agent builds without clang, and CI
// checks that it is what this source compiles to.
//
// No vmlinux.h: the few kernel structures read are declared below with
// `preserve_access_index`, so their field offsets are relocated (CO-RE) against the running
// kernel's BTF when the agent loads the object.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define S_IFMT 00170000
#define S_IFSOCK 0140000

// TCP states (include/net/tcp_states.h).
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10

#define NR_CONNECT_X86_64 42

// What an event says happened. Shared with agent/src/collect/sockets/ebpf.rs.
enum kind {
	// Outbound TCP connection established; the owner is who called connect().
	EV_CONNECT = 1,
	// Inbound TCP connection established; the owner is the listener's (told by the agent).
	EV_ACCEPT = 2,
	// An established TCP connection closing (either side first).
	EV_CLOSE = 3,
	// A TCP socket starting to listen; the owner is who called listen().
	EV_LISTEN = 4,
	// A TCP listener closing.
	EV_UNLISTEN = 5,
	// A UDP socket connected by connect(2).
	EV_UDP_CONNECT = 6,
	// An outbound TCP connection that never established (refused, timed out).
	EV_CONNECT_FAILED = 7,
};

struct event {
	__u64 at_ns; // CLOCK_BOOTTIME
	__u64 sock; // the socket's kernel address: ties an open to its close, nothing more
	__u32 tgid; // 0: not known here (EV_ACCEPT)
	__u32 tid;
	__u32 netns;
	__u32 uid; // the socket's owner uid, as sock_diag reports it
	__u16 sport; // host order
	__u16 dport; // host order
	__u8 kind;
	__u8 family;
	__u8 protocol;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
};

// Who called connect() on a TCP socket, kept from SYN_SENT until it establishes or fails
// (the kernel completes the handshake in softirq, outside that process).
struct owner {
	__u32 tgid;
	__u32 tid;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct owner);
} CONNECTING SEC(".maps");

// Events the ring had no room for, per CPU: the agent reports their sum.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} DROPPED SEC(".maps");

// The kernel's structures, as far as read; offsets come from the kernel's BTF.
struct in6_addr {
	__u8 bytes[16];
};

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

typedef struct {
	__u32 val;
} kuid_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	kuid_t sk_uid;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct pt_regs {
	unsigned long di;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

// Bytes waiting in the ring past which a submit wakes the reader; below, the reader finds the
// events at its next look (the agent's tick, every second), so a busy host does not wake it for
// each one. Set by the agent at load (a quarter of the ring).
const volatile __u64 wake_at = 64 * 1024;

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&DROPPED, &zero);
	if (n)
		*n += 1;
}

// Fills the socket's addresses, ports, family, protocol and namespace; 0 where it is not IP.
static __always_inline int fill_socket(struct event *e, struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	e->family = family;
	e->sock = (__u64)sk;
	e->protocol = BPF_CORE_READ(sk, sk_protocol);
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e->uid = BPF_CORE_READ(sk, sk_uid.val);
	if (family == AF_INET) {
		__be32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->saddr, &s, 4);
		__builtin_memcpy(e->daddr, &d, 4);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
	}
	return 1;
}

static __always_inline void emit(struct sock *sk, __u8 kind, const struct owner *who)
{
	struct event *e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		count_drop();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	if (!fill_socket(e, sk)) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->at_ns = bpf_ktime_get_boot_ns();
	e->kind = kind;
	if (who) {
		e->tgid = who->tgid;
		e->tid = who->tid;
		__builtin_memcpy(e->comm, who->comm, sizeof(e->comm));
	}
	__u64 flags = bpf_ringbuf_query(&EVENTS, BPF_RB_AVAIL_DATA) >= wake_at ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

static __always_inline void current_owner(struct owner *o)
{
	__u64 id = bpf_get_current_pid_tgid();
	o->tgid = id >> 32;
	o->tid = (__u32)id;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(set_state, struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u64 key = (__u64)sk;
	struct owner me = {};

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT) {
		// In connect(): the caller is the owner, kept until the handshake ends.
		current_owner(&me);
		bpf_map_update_elem(&CONNECTING, &key, &me, BPF_ANY);
	} else if (oldstate == TCP_SYN_SENT) {
		struct owner *who = bpf_map_lookup_elem(&CONNECTING, &key);
		if (who) {
			me = *who;
			bpf_map_delete_elem(&CONNECTING, &key);
		}
		emit(sk, newstate == TCP_ESTABLISHED ? EV_CONNECT : EV_CONNECT_FAILED, who ? &me : 0);
	} else if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		emit(sk, EV_ACCEPT, 0);
	} else if (oldstate == TCP_ESTABLISHED) {
		emit(sk, EV_CLOSE, 0);
	} else if (newstate == TCP_LISTEN) {
		// In listen(): the caller is the owner.
		current_owner(&me);
		emit(sk, EV_LISTEN, &me);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		// Only a close: an accepted connection's socket is born a copy of its listener and
		// leaves LISTEN for SYN_RECV, which is no listener closing.
		current_owner(&me);
		emit(sk, EV_UNLISTEN, &me);
	}
	return 0;
}

// connect(2) on a UDP socket (or io_uring's connect): no state changes to trace, so the return
// of the datagram sockets' connect, which IPv4 and IPv6 share and which is always called through
// the socket's operations (never inlined). The caller is the owner. A trampoline on this one
// function costs nothing to the system's other calls, where a hook on every system call's exit
// would.
static __always_inline void udp_connected(struct socket *sock)
{
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_UDP)
		return;
	// connect(AF_UNSPEC) disconnects: no peer, nothing opened.
	if (BPF_CORE_READ(sk, __sk_common.skc_dport) == 0)
		return;
	struct owner me = {};
	current_owner(&me);
	emit(sk, EV_UDP_CONNECT, &me);
}

SEC("fexit/inet_dgram_connect")
int BPF_PROG(udp_connect, struct socket *sock, void *uaddr, int addr_len, int flags, int ret)
{
	if (ret == 0)
		udp_connected(sock);
	return 0;
}

// The same where the kernel refuses trampolines: every system call's return, connect(2)'s
// picked out by number (x86-64 only), its socket found through the caller's descriptor table.
SEC("raw_tracepoint/sys_exit")
int udp_connect_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	if (BPF_CORE_READ(regs, orig_ax) != NR_CONNECT_X86_64 || (long)ctx->args[1] != 0)
		return 0;
	unsigned int fd = (unsigned int)BPF_CORE_READ(regs, di);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return 0;
	// Only a socket's private_data is a struct socket.
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	udp_connected(BPF_CORE_READ(file, private_data));
	return 0;
}
