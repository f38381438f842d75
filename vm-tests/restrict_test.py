#!/usr/bin/python3
"""SLIM_IOC_RESTRICT end to end, run as root inside the test VM by guest.sh (module loaded, lo up):
the refused operations, the setsockopt and ioctl filters, dup/fork/accepted children, STATS,
AUTHORIZE_CONNECT, SET_CHILD_ADDRS, REVOKE, and restricted sockets passed with SCM_RIGHTS to an
unprivileged process.

Prints one "ok   - ..." or "FAIL - ..." line per check and exits non-zero on any failure. Every
socket it restricts is closed before it exits, so guest.sh can then check that rmmod succeeds.
"""
import errno
import fcntl
import os
import socket
import struct
import subprocess
import sys

IOC_WRITE, IOC_READ = 1, 2
MAGIC = ord("S")


def ioc(d, nr, size):
    return (d << 30) | (size << 16) | (MAGIC << 8) | nr


IOC_RESTRICT = ioc(IOC_WRITE, 1, 72)
IOC_STATS = ioc(IOC_READ, 5, 160)
REF_CONNECT, REF_BIND, REF_LISTEN, REF_SENDMSG_ADDR, REF_FASTOPEN, REF_SETSOCKOPT, REF_IOCTL = range(7)

# Option and ioctl numbers (x86-64 Linux uapi) not all exported by Python's socket module.
SO_PRIORITY, SO_BINDTODEVICE, SO_MARK, SO_BINDTOIFINDEX, SO_LINGER, SO_SNDTIMEO = 12, 25, 36, 62, 13, 21
IP_TOS, IP_FREEBIND, IP_TRANSPARENT = 1, 15, 19
IPV6_ADDRFORM, IPV6_TCLASS, IPV6_TRANSPARENT, IPV6_FREEBIND = 1, 67, 75, 78
FIONREAD, SIOCOUTQ = 0x541B, 0x5411
SIOCGIFNAME, SIOCGIFCONF, SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFADDR = 0x8910, 0x8912, 0x8913, 0x8914, 0x8915
SIOCGIFMTU, SIOCGIFHWADDR, SIOCGIFINDEX, SIOCETHTOOL, SIOCGARP = 0x8921, 0x8927, 0x8933, 0x8946, 0x8954
IFREQ_LO = struct.pack("16s24x", b"lo")  # struct ifreq (40 bytes) naming "lo"
IFREQ_IDX1 = struct.pack("16xi20x", 1)   # struct ifreq with ifr_ifindex = 1 (for SIOCGIFNAME)
IFCONF_NULL = struct.pack("=i4xQ", 0, 0)  # struct ifconf { len 0, buf NULL }: asks the needed size


def setopt(sk, level, name, val):
    return lambda: sk.setsockopt(level, name, val)


def int_ioctl(sk, cmd):
    return struct.unpack("i", fcntl.ioctl(sk.fileno(), cmd, bytes(4)))[0]


# The refused ioctls, each with an argument that the unrestricted socket accepts.
REFUSED_IOCTLS = [
    ("SIOCGIFINDEX", SIOCGIFINDEX, IFREQ_LO),
    ("SIOCGIFNAME", SIOCGIFNAME, IFREQ_IDX1),
    ("SIOCGIFFLAGS", SIOCGIFFLAGS, IFREQ_LO),
    ("SIOCGIFADDR", SIOCGIFADDR, IFREQ_LO),
    ("SIOCGIFMTU", SIOCGIFMTU, IFREQ_LO),
    ("SIOCGIFHWADDR", SIOCGIFHWADDR, IFREQ_LO),
    ("SIOCSIFFLAGS", SIOCSIFFLAGS, IFREQ_LO),
    ("SIOCETHTOOL", SIOCETHTOOL, IFREQ_LO),
]

failures = 0


def check(name, cond, detail=""):
    global failures
    if cond:
        print(f"ok   - {name}{': ' + str(detail) if detail != '' else ''}")
    else:
        failures += 1
        print(f"FAIL - {name}: {detail}")


def addr4(ip, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + bytes(ip) + bytes(20)


def addr6(ip, port):
    return struct.pack("=H", socket.AF_INET6) + struct.pack(">H", port) + bytes(4) + bytes(ip) + bytes(4)


def errname(fn):
    """None if fn() succeeds, else the errno name it raised."""
    try:
        fn()
        return None
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)


dev = os.open("/dev/slim", os.O_RDWR)


def restrict(fd, flags=0, tag=7, local=addr4([10, 32, 0, 2], 40000), peer=addr4([10, 32, 0, 1], 80)):
    fcntl.ioctl(dev, IOC_RESTRICT, struct.pack("=iIQ", fd, flags, tag) + local + peer)


def stats():
    buf = bytearray(160)
    fcntl.ioctl(dev, IOC_STATS, buf, True)
    v = struct.unpack("=4Q16Q", buf)
    return {"live": v[0], "total": v[1], "children": v[2], "revoked": v[3], "ref": list(v[4:])}


def module_refcount():
    with open("/proc/modules") as f:
        for line in f:
            p = line.split()
            if p[0] == "slim_kern":
                return int(p[2])
    return None


# --- a connected TCP pair over loopback
lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lst.bind(("127.0.0.1", 0))
lst.listen(8)
port = lst.getsockname()[1]
cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
cli.connect(("127.0.0.1", port))
srv, _ = lst.accept()
s0 = stats()
ref0 = module_refcount()

e = errname(lambda: restrict(cli.fileno()))
check("RESTRICT a connected IPv4 TCP client socket", e is None, e if e else "")
s = stats()
check("STATS: restricted_live=1 restricted_total=1", s["live"] == 1 and s["total"] == 1, s)
check("module refcount +1 while restricted", module_refcount() == ref0 + 1, f"{ref0} -> {module_refcount()}")

# --- getsockname / getpeername / SO_PEERNAME answer the virtual addresses
check("getsockname -> the virtual local address", cli.getsockname() == ("10.32.0.2", 40000), cli.getsockname())
check("getpeername -> the virtual peer address", cli.getpeername() == ("10.32.0.1", 80), cli.getpeername())
raw = cli.getsockopt(socket.SOL_SOCKET, 28, 16)  # SO_PEERNAME = 28; buflen must be <= 16
check("getsockopt(SO_PEERNAME) -> the virtual peer address", raw[:8] == addr4([10, 32, 0, 1], 80)[:8], raw.hex())

# --- data still flows both ways
cli.sendall(b"ping")
got = srv.recv(16)
check("send from the restricted socket", got == b"ping", got)
srv.sendall(b"pong")
got = cli.recv(16)
check("recv on the restricted socket", got == b"pong", got)
check("getsockopt(SO_TYPE) still works", cli.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM)

# --- refused operations
want = {REF_CONNECT: 0, REF_BIND: 0, REF_LISTEN: 0, REF_FASTOPEN: 0}
e = errname(lambda: cli.connect(("127.0.0.1", port)))
want[REF_CONNECT] += 1
check("connect on the restricted socket -> EPERM", e == "EPERM", e)
e = errname(lambda: cli.connect(("127.0.0.1", 1)))
want[REF_CONNECT] += 1
check("connect elsewhere -> EPERM", e == "EPERM", e)
e = errname(lambda: cli.bind(("127.0.0.1", 0)))
want[REF_BIND] += 1
check("bind -> EPERM", e == "EPERM", e)
e = errname(lambda: cli.listen(1))
want[REF_LISTEN] += 1
check("listen -> EPERM", e == "EPERM", e)
e = errname(lambda: cli.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", port)))
want[REF_FASTOPEN] += 1
check("sendto(MSG_FASTOPEN) -> EPERM", e == "EPERM", e)

# --- the same options / ioctls work on the unrestricted peer (so the refusals below are the module's)
ctl_ok = all(errname(setopt(srv, *a)) is None for a in [
    (socket.SOL_SOCKET, SO_MARK, 0), (socket.SOL_SOCKET, SO_PRIORITY, 7), (socket.SOL_IP, IP_TOS, 0xB8),
    (socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo"), (socket.SOL_IP, IP_FREEBIND, 1)])
srv.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"")
check("control: unrestricted socket may set SO_MARK, SO_PRIORITY 7, IP_TOS 0xb8, SO_BINDTODEVICE, IP_FREEBIND", ctl_ok)
ctl = {n: errname(lambda: fcntl.ioctl(srv.fileno(), c, a)) for n, c, a in REFUSED_IOCTLS if n not in ("SIOCSIFFLAGS", "SIOCETHTOOL")}
check("control: unrestricted socket may use SIOCGIF* (lo)", all(v is None for v in ctl.values()), ctl)

# --- setsockopt: refused options (EPERM), counted under SLIM_REFUSED_SETSOCKOPT
want[REF_SETSOCKOPT] = 0
want[REF_IOCTL] = 0
for name, lvl, opt, val in [
    ("SO_BINDTODEVICE lo", socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo"),
    ("SO_BINDTODEVICE '' (unbind)", socket.SOL_SOCKET, SO_BINDTODEVICE, b""),
    ("SO_BINDTOIFINDEX 1", socket.SOL_SOCKET, SO_BINDTOIFINDEX, 1),
    ("SO_MARK 1", socket.SOL_SOCKET, SO_MARK, 1),
    ("SO_PRIORITY 7", socket.SOL_SOCKET, SO_PRIORITY, 7),
    ("SO_PRIORITY -1", socket.SOL_SOCKET, SO_PRIORITY, -1),
    ("IP_TRANSPARENT 1", socket.SOL_IP, IP_TRANSPARENT, 1),
    ("IP_FREEBIND 1", socket.SOL_IP, IP_FREEBIND, 1),
    ("IP_TOS 0xb8 (EF)", socket.SOL_IP, IP_TOS, 0xB8),
    ("IP_TOS 0x20 (CS1), one-byte optval", socket.SOL_IP, IP_TOS, b"\x20"),
    ("IPV6_ADDRFORM on an IPv4 socket", socket.IPPROTO_IPV6, IPV6_ADDRFORM, socket.AF_INET),
]:
    e = errname(setopt(cli, lvl, opt, val))
    want[REF_SETSOCKOPT] += 1
    check(f"setsockopt {name} -> EPERM", e == "EPERM", e)
check("SO_MARK unchanged (0)", cli.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0, cli.getsockopt(socket.SOL_SOCKET, SO_MARK))

# --- setsockopt: harmless options still work (SOL_SOCKET ones through sock_setsockopt)
cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
v = cli.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
check("SO_RCVBUF set 65536 -> get 131072 (doubled by the kernel)", v == 131072, v)
cli.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
check("SO_KEEPALIVE set+get", cli.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1)
cli.setsockopt(socket.SOL_SOCKET, SO_LINGER, struct.pack("ii", 1, 5))
v = struct.unpack("ii", cli.getsockopt(socket.SOL_SOCKET, SO_LINGER, 8))
check("SO_LINGER set+get", v == (1, 5), v)
cli.setsockopt(socket.SOL_SOCKET, SO_SNDTIMEO, struct.pack("qq", 3, 0))
v = struct.unpack("qq", cli.getsockopt(socket.SOL_SOCKET, SO_SNDTIMEO, 16))
check("SO_SNDTIMEO set+get", v == (3, 0), v)
cli.setsockopt(socket.SOL_SOCKET, SO_PRIORITY, 6)
check("SO_PRIORITY 6 (unprivileged range) allowed", cli.getsockopt(socket.SOL_SOCKET, SO_PRIORITY) == 6)
cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
check("TCP_NODELAY set+get", cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1)
cli.setsockopt(socket.SOL_IP, IP_TOS, 0x10)
v = cli.getsockopt(socket.SOL_IP, IP_TOS)
check("IP_TOS 0x10 (no precedence bits) allowed", v == 0x10, v)
e = errname(setopt(cli, socket.SOL_SOCKET, socket.SO_RCVBUF, b"x"))
check("short SO_RCVBUF optval -> EINVAL from the kernel (delegated)", e == "EINVAL", e)
e = errname(setopt(cli, socket.SOL_SOCKET, 9999, 1))
check("unknown SOL_SOCKET option -> ENOPROTOOPT (delegated)", e == "ENOPROTOOPT", e)

import ctypes as _ct
_libc = _ct.CDLL(None, use_errno=True)


def raw_setsockopt(sk, level, name, ptr, length):
    if _libc.setsockopt(sk.fileno(), level, name, _ct.c_void_p(ptr), length) != 0:
        raise OSError(_ct.get_errno(), "setsockopt")


e = errname(lambda: raw_setsockopt(cli, socket.SOL_SOCKET, SO_PRIORITY, 0, 4))
check("SO_PRIORITY from a NULL optval -> EFAULT (read by the filter)", e == "EFAULT", e)
e = errname(lambda: raw_setsockopt(cli, socket.SOL_IP, IP_TOS, 0xFFFF888000000000, 4))
check("IP_TOS from a kernel-half optval -> EFAULT", e == "EFAULT", e)
e = errname(lambda: raw_setsockopt(cli, socket.SOL_SOCKET, socket.SO_RCVBUF, 0, 4))
check("SO_RCVBUF from a NULL optval -> EFAULT (delegated)", e == "EFAULT", e)

# --- ioctl: SIOCGIF* & co refused (EPERM), FIONREAD / SIOCOUTQ work
for n, c, a in REFUSED_IOCTLS:
    e = errname(lambda: fcntl.ioctl(cli.fileno(), c, a))
    want[REF_IOCTL] += 1
    check(f"ioctl {n} -> EPERM", e == "EPERM", e)
# Known gap, not a check: 64-bit SIOCGIFCONF is answered by net/socket.c's sock_ioctl (dev_ifconf)
# before proto_ops->ioctl, so the module cannot refuse it there (the 32-bit path goes through
# ops->compat_ioctl first and is refused). Printed so the log shows the current state.
e = errname(lambda: fcntl.ioctl(cli.fileno(), SIOCGIFCONF, IFCONF_NULL))
print(f"note: KNOWN GAP: native SIOCGIFCONF on a restricted socket -> {e or 'succeeds (not filterable via proto_ops)'}")
srv.sendall(b"12345")
import time
time.sleep(0.2)
v = int_ioctl(cli, FIONREAD)
check("ioctl FIONREAD -> 5 bytes queued", v == 5, v)
check("ioctl SIOCOUTQ -> 0", int_ioctl(cli, SIOCOUTQ) == 0)
check("data read after FIONREAD", cli.recv(16) == b"12345")

# --- dup() and fork() see the same socket, so the same restriction
d = socket.socket(fileno=os.dup(cli.fileno()))
e = errname(lambda: d.connect(("127.0.0.1", port)))
want[REF_CONNECT] += 1
check("dup()ed fd: connect -> EPERM", e == "EPERM", e)
e = errname(lambda: restrict(d.fileno()))
check("RESTRICT again (via the dup) -> EEXIST", e == "EEXIST", e)
e = errname(setopt(d, socket.SOL_SOCKET, SO_MARK, 2))
want[REF_SETSOCKOPT] += 1
check("dup()ed fd: SO_MARK -> EPERM", e == "EPERM", e)
e = errname(lambda: fcntl.ioctl(d.fileno(), SIOCGIFINDEX, IFREQ_LO))
want[REF_IOCTL] += 1
check("dup()ed fd: SIOCGIFINDEX -> EPERM", e == "EPERM", e)
d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
check("dup()ed fd: SO_RCVBUF set+get", d.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 65536)
d.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
check("dup()ed fd: TCP_NODELAY set+get", d.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0)
d.close()
pid = os.fork()
if pid == 0:
    rc = 0
    if errname(lambda: cli.connect(("127.0.0.1", port))) != "EPERM":
        rc |= 1
    if errname(lambda: cli.bind(("127.0.0.1", 0))) != "EPERM":
        rc |= 2
    try:
        cli.sendall(b"child")
    except OSError:
        rc |= 4
    if errname(setopt(cli, socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo")) != "EPERM":
        rc |= 8
    if errname(setopt(cli, socket.SOL_IP, IP_TRANSPARENT, 1)) != "EPERM":
        rc |= 16
    if errname(lambda: fcntl.ioctl(cli.fileno(), SIOCGIFINDEX, IFREQ_LO)) != "EPERM":
        rc |= 32
    try:
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        if cli.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0 or int_ioctl(cli, FIONREAD) != 0:
            rc |= 64
    except OSError:
        rc |= 64
    os._exit(rc)
_, status = os.waitpid(pid, 0)
want[REF_CONNECT] += 1
want[REF_BIND] += 1
want[REF_SETSOCKOPT] += 2
want[REF_IOCTL] += 1
check("fork()ed child: connect, bind, SO_BINDTODEVICE, IP_TRANSPARENT, SIOCGIFINDEX -> EPERM; "
      "send, SO_KEEPALIVE, FIONREAD work", os.waitstatus_to_exitcode(status) == 0, status)
got = srv.recv(16)
check("data sent by the child arrives", got == b"child", got)

s = stats()
got_ref = {k: s["ref"][k] - s0["ref"][k] for k in want}
check("STATS counts the refusals by kind", got_ref == want, f"got {got_ref} want {want}")

# --- rmmod is refused while a restricted socket lives
r = subprocess.run(["rmmod", "slim_kern"], capture_output=True, text=True)
check("rmmod refused while a restricted socket is open", r.returncode != 0, (r.stderr or r.stdout).strip())

# --- bad input: errors, never an oops
null = os.open("/dev/null", os.O_RDONLY)
e = errname(lambda: restrict(null))
check("RESTRICT /dev/null -> ENOTSOCK", e == "ENOTSOCK", e)
os.close(null)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
e = errname(lambda: restrict(udp.fileno()))
check("RESTRICT a UDP socket -> EPROTONOSUPPORT", e == "EPROTONOSUPPORT", e)
udp.close()
ux = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
e = errname(lambda: restrict(ux.fileno()))
check("RESTRICT an AF_UNIX stream socket -> EPROTONOSUPPORT", e == "EPROTONOSUPPORT", e)
ux.close()
e = errname(lambda: restrict(-1))
check("RESTRICT fd -1 -> EBADF", e == "EBADF", e)
e = errname(lambda: restrict(987654))
check("RESTRICT unused fd -> EBADF", e == "EBADF", e)
e = errname(lambda: restrict(srv.fileno(), flags=1 << 9))
check("RESTRICT with an unknown flag -> EINVAL", e == "EINVAL", e)
e = errname(lambda: restrict(srv.fileno(), local=bytes(28)))
check("RESTRICT without a local address -> EINVAL", e == "EINVAL", e)
e = errname(lambda: fcntl.ioctl(dev, IOC_RESTRICT, 0))
check("RESTRICT from a NULL pointer -> EFAULT", e == "EFAULT", e)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)


def raw_ioctl(cmd, ptr):
    if libc.ioctl(dev, ctypes.c_ulong(cmd), ctypes.c_void_p(ptr)) != 0:
        raise OSError(ctypes.get_errno(), "ioctl")


e = errname(lambda: raw_ioctl(IOC_RESTRICT, 0xFFFF888000000000))
check("RESTRICT from a kernel-half pointer -> EFAULT", e == "EFAULT", e)
check("STATS: still one live restricted socket", stats()["live"] == 1, stats())

# --- IPv6 TCP, and a restricted listener whose accepted children inherit the restriction
v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
e = errname(lambda: restrict(v6.fileno()))
check("RESTRICT an IPv6 socket with IPv4 virtual addresses -> EINVAL", e == "EINVAL", e)
ip6 = bytes([0xFD] + [0] * 14 + [2])
e = errname(lambda: restrict(v6.fileno(), local=addr6(ip6, 443), peer=bytes(28)))
check("RESTRICT an (unconnected) IPv6 TCP socket", e is None, e if e else "")
check("IPv6 getsockname -> the virtual address", v6.getsockname()[:2] == ("fd00::2", 443), v6.getsockname())
e = errname(lambda: v6.getpeername())
check("IPv6 getpeername without a recorded peer -> ENOTCONN", e == "ENOTCONN", e)
e = errname(lambda: v6.connect(("::1", 1)))
check("IPv6 restricted: connect -> EPERM", e == "EPERM", e)
s6 = stats()["ref"]
for name, lvl, opt, val in [
    ("IPV6_ADDRFORM AF_INET", socket.IPPROTO_IPV6, IPV6_ADDRFORM, socket.AF_INET),
    ("IPV6_TRANSPARENT 1", socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1),
    ("IPV6_FREEBIND 1", socket.IPPROTO_IPV6, IPV6_FREEBIND, 1),
    ("IPV6_TCLASS 0xb8", socket.IPPROTO_IPV6, IPV6_TCLASS, 0xB8),
    ("IP_TRANSPARENT (SOL_IP on IPv6)", socket.SOL_IP, IP_TRANSPARENT, 1),
    ("SO_MARK 1", socket.SOL_SOCKET, SO_MARK, 1),
]:
    e = errname(setopt(v6, lvl, opt, val))
    check(f"IPv6 restricted: setsockopt {name} -> EPERM", e == "EPERM", e)
v6.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, 0x04)
check("IPv6 restricted: IPV6_TCLASS 0x04 allowed", v6.getsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS) == 0x04)
v6.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, -1)
check("IPv6 restricted: IPV6_TCLASS -1 (default) allowed", v6.getsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS) == 0)
v6.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
check("IPv6 restricted: SO_KEEPALIVE set+get", v6.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1)
e = errname(lambda: fcntl.ioctl(v6.fileno(), SIOCGIFINDEX, IFREQ_LO))
check("IPv6 restricted: SIOCGIFINDEX -> EPERM", e == "EPERM", e)
d6 = [a - b for a, b in zip(stats()["ref"], s6)]
check("IPv6: STATS counts 6 setsockopt and 1 ioctl refusals", d6[REF_SETSOCKOPT] == 6 and d6[REF_IOCTL] == 1, d6)
v6.close()

e = errname(lambda: restrict(lst.fileno(), flags=1))
check("RESTRICT the listening socket (LISTENER flag)", e is None, e if e else "")
c2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c2.connect(("127.0.0.1", port))
child, caddr = lst.accept()
check("accept() on the restricted listener: peer address all-zero (not recorded yet)", caddr == ("0.0.0.0", 0), caddr)
check("accepted child: getsockname -> the listener's virtual address", child.getsockname() == ("10.32.0.2", 40000), child.getsockname())
e = errname(lambda: child.connect(("127.0.0.1", port)))
check("accepted child inherits the restriction: connect -> EPERM", e == "EPERM", e)
e = errname(setopt(child, socket.SOL_SOCKET, SO_MARK, 1))
check("accepted child: SO_MARK -> EPERM (SOCK_CUSTOM_SOCKOPT set on the child)", e == "EPERM", e)
e = errname(setopt(child, socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo"))
check("accepted child: SO_BINDTODEVICE -> EPERM", e == "EPERM", e)
e = errname(lambda: fcntl.ioctl(child.fileno(), SIOCGIFADDR, IFREQ_LO))
check("accepted child: SIOCGIFADDR -> EPERM", e == "EPERM", e)
child.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
check("accepted child: SO_RCVBUF set+get", child.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 131072)
child.sendall(b"hi")
check("accepted child carries data", c2.recv(16) == b"hi")
s = stats()
check("STATS: children_total=1, live=3 (client, listener, child)", s["children"] == 1 and s["live"] == 3, s)


# --- SET_CHILD_ADDRS: the router records the accepted child's virtual addresses
IOC_AUTHORIZE = ioc(IOC_WRITE, 2, 40)
IOC_CHILD = ioc(IOC_WRITE, 3, 64)
IOC_REVOKE = ioc(IOC_READ | IOC_WRITE, 4, 16)


def child_addrs(fd, local=addr4([10, 32, 0, 2], 40000), peer=addr4([10, 32, 0, 9], 5555), flags=0):
    fcntl.ioctl(dev, IOC_CHILD, struct.pack("=iI", fd, flags) + local + peer)


def authorize(fd, host, flags=0, reserved=0):
    fcntl.ioctl(dev, IOC_AUTHORIZE, struct.pack("=iI", fd, flags) + host + struct.pack("=I", reserved))


def revoke(tag, flags=0, revoked=0):
    buf = bytearray(struct.pack("=QII", tag, flags, revoked))
    fcntl.ioctl(dev, IOC_REVOKE, buf, True)
    return struct.unpack("=QII", buf)[2]


e = errname(lambda: child_addrs(child.fileno()))
check("SET_CHILD_ADDRS on the accepted child", e is None, e if e else "")
check("child getpeername -> the recorded virtual peer", child.getpeername() == ("10.32.0.9", 5555), child.getpeername())
check("child getsockname -> the recorded virtual local", child.getsockname() == ("10.32.0.2", 40000), child.getsockname())
raw = child.getsockopt(socket.SOL_SOCKET, 28, 16)
check("child SO_PEERNAME -> the recorded virtual peer", raw[:8] == addr4([10, 32, 0, 9], 5555)[:8], raw.hex())
e = errname(lambda: child_addrs(child.fileno(), peer=bytes(28)))
check("SET_CHILD_ADDRS without a peer -> EINVAL", e == "EINVAL", e)
e = errname(lambda: child_addrs(child.fileno(), flags=1))
check("SET_CHILD_ADDRS with flags -> EINVAL", e == "EINVAL", e)
e = errname(lambda: child_addrs(child.fileno(), local=addr6(ip6, 1), peer=addr6(ip6, 2)))
check("SET_CHILD_ADDRS IPv6 addresses on an IPv4 child -> EINVAL", e == "EINVAL", e)
e = errname(lambda: child_addrs(cli.fileno()))
check("SET_CHILD_ADDRS on a restricted non-child -> EINVAL", e == "EINVAL", e)
e = errname(lambda: child_addrs(srv.fileno()))
check("SET_CHILD_ADDRS on an unrestricted socket -> ENOENT", e == "ENOENT", e)
e = errname(lambda: child_addrs(-1))
check("SET_CHILD_ADDRS fd -1 -> EBADF", e == "EBADF", e)
e = errname(lambda: fcntl.ioctl(dev, IOC_CHILD, 0))
check("SET_CHILD_ADDRS from a NULL pointer -> EFAULT", e == "EFAULT", e)
check("child still carries data after SET_CHILD_ADDRS", (child.sendall(b"ok"), c2.recv(16))[1] == b"ok")

# --- AUTHORIZE_CONNECT: the one host endpoint a restricted, unconnected socket may connect to
lst2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # an ordinary (unrestricted) host listener
lst2.bind(("127.0.0.1", 0))
lst2.listen(8)
port2 = lst2.getsockname()[1]
ra = stats()["ref"][REF_CONNECT]
ta = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
restrict(ta.fileno(), tag=100, peer=bytes(28))
e = errname(lambda: ta.connect(("127.0.0.1", port2)))
check("restricted unconnected socket, no authorization: connect -> EPERM", e == "EPERM", e)
plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
e = errname(lambda: authorize(plain.fileno(), addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE an unrestricted socket -> ENOENT", e == "ENOENT", e)
plain.close()
e = errname(lambda: authorize(lst.fileno(), addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE a restricted listener -> EINVAL", e == "EINVAL", e)
e = errname(lambda: authorize(cli.fileno(), addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE a connected restricted socket -> EISCONN", e == "EISCONN", e)
e = errname(lambda: authorize(child.fileno(), addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE an accepted child -> EISCONN", e == "EISCONN", e)
null = os.open("/dev/null", os.O_RDONLY)
e = errname(lambda: authorize(null, addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE /dev/null -> ENOTSOCK", e == "ENOTSOCK", e)
os.close(null)
e = errname(lambda: authorize(-1, addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE fd -1 -> EBADF", e == "EBADF", e)
e = errname(lambda: authorize(ta.fileno(), addr4([127, 0, 0, 1], port2), reserved=1))
check("AUTHORIZE with reserved != 0 -> EINVAL", e == "EINVAL", e)
e = errname(lambda: authorize(ta.fileno(), addr4([127, 0, 0, 1], port2), flags=1))
check("AUTHORIZE with flags -> EINVAL", e == "EINVAL", e)
e = errname(lambda: authorize(ta.fileno(), bytes(28)))
check("AUTHORIZE without an address -> EINVAL", e == "EINVAL", e)
e = errname(lambda: authorize(ta.fileno(), addr6(bytes(15) + b"\x01", port2)))
check("AUTHORIZE an IPv6 endpoint for an IPv4 socket -> EINVAL", e == "EINVAL", e)
e = errname(lambda: fcntl.ioctl(dev, IOC_AUTHORIZE, 0))
check("AUTHORIZE from a NULL pointer -> EFAULT", e == "EFAULT", e)
e = errname(lambda: authorize(ta.fileno(), addr4([127, 0, 0, 1], 1)))
check("AUTHORIZE 127.0.0.1:1", e is None, e if e else "")
e = errname(lambda: authorize(ta.fileno(), addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE again replaces it (127.0.0.1:listener)", e is None, e if e else "")
e = errname(lambda: ta.connect(("127.0.0.1", 1)))
check("connect to the replaced authorization -> EPERM", e == "EPERM", e)
e = errname(lambda: ta.connect(("127.0.0.2", port2)))
check("connect to another address, authorized port -> EPERM", e == "EPERM", e)
e = errname(lambda: ta.connect(("127.0.0.1", port2 + 1 if port2 < 65535 else 1)))
check("connect to the authorized address, another port -> EPERM", e == "EPERM", e)


def raw_connect(sk, sa):
    b = ctypes.create_string_buffer(bytes(sa), len(sa))
    if libc.connect(sk.fileno(), b, len(sa)) != 0:
        raise OSError(ctypes.get_errno(), "connect")


e = errname(lambda: raw_connect(ta, struct.pack("=H", 0) + bytes(14)))
check("connect AF_UNSPEC -> EPERM", e == "EPERM", e)
e = errname(lambda: raw_connect(ta, addr4([127, 0, 0, 1], port2)[:12]))
check("connect with a short sockaddr_in (12 bytes) -> EPERM", e == "EPERM", e)
ta.setblocking(False)
rc = ta.connect_ex(("127.0.0.1", port2))
check("non-blocking connect to the authorized endpoint -> EINPROGRESS (or 0)", rc in (0, errno.EINPROGRESS),
      errno.errorcode.get(rc, rc))
import select
select.select([], [ta], [], 10)
check("connect completed (SO_ERROR 0)", ta.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
rc = ta.connect_ex(("127.0.0.1", port2))
# The kernel's own answers (__inet_stream_connect): the first connect after a non-blocking one has
# completed moves SS_CONNECTING to SS_CONNECTED and returns 0; every later one EISCONN.
check("second connect to the authorized endpoint -> the kernel's 0 (completes SS_CONNECTING)", rc == 0,
      errno.errorcode.get(rc, rc))
rc = ta.connect_ex(("127.0.0.1", port2))
check("third connect to the authorized endpoint -> the kernel's EISCONN", rc == errno.EISCONN,
      errno.errorcode.get(rc, rc))
rc = ta.connect_ex(("127.0.0.1", 1))
check("connect elsewhere after success -> EPERM", rc == errno.EPERM, errno.errorcode.get(rc, rc))
e = errname(lambda: authorize(ta.fileno(), addr4([127, 0, 0, 1], 1)))
check("AUTHORIZE after the socket connected -> EISCONN", e == "EISCONN", e)
ta.setblocking(True)
tpeer, _ = lst2.accept()
ta.sendall(b"authorized")
got = tpeer.recv(32)
check("data flows over the authorized connection (restricted -> host)", got == b"authorized", got)
tpeer.sendall(b"back")
got = ta.recv(32)
check("data flows back (host -> restricted)", got == b"back", got)
check("authorized socket: getsockname still the virtual address", ta.getsockname() == ("10.32.0.2", 40000), ta.getsockname())

# IPv6 socket: an IPv4 authorization is reached through the v4-mapped address
t6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
restrict(t6.fileno(), tag=100, local=addr6(ip6, 443), peer=bytes(28))
e = errname(lambda: authorize(t6.fileno(), addr4([127, 0, 0, 1], port2)))
check("AUTHORIZE an IPv4 endpoint for an IPv6 socket", e is None, e if e else "")
e = errname(lambda: t6.connect(("::1", port2)))
check("IPv6: connect to ::1 (not the authorized endpoint) -> EPERM", e == "EPERM", e)
e = errname(lambda: t6.connect(("::ffff:127.0.0.2", port2)))
check("IPv6: connect to another v4-mapped address -> EPERM", e == "EPERM", e)
e = errname(lambda: t6.connect(("::ffff:127.0.0.1", port2)))
check("IPv6: connect to the v4-mapped authorized endpoint", e is None, e if e else "")
t6peer, _ = lst2.accept()
t6.sendall(b"v6")
check("IPv6 (v4-mapped) authorized connection carries data", t6peer.recv(8) == b"v6")
dc = stats()["ref"][REF_CONNECT] - ra
check("STATS: 9 connect refusals in the AUTHORIZE tests", dc == 9, dc)

# --- REVOKE: shut down every restricted socket of a tag
pairs = []
for tag in (555, 555, 556):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.connect(("127.0.0.1", port2))
    p, _ = lst2.accept()
    restrict(c.fileno(), tag=tag)
    pairs.append((c, p))
s1 = stats()
e = errname(lambda: revoke(555, flags=1))
check("REVOKE with flags -> EINVAL", e == "EINVAL", e)
e = errname(lambda: revoke(555, revoked=3))
check("REVOKE with a non-zero out field -> EINVAL", e == "EINVAL", e)
e = errname(lambda: fcntl.ioctl(dev, IOC_REVOKE, 0))
check("REVOKE from a NULL pointer -> EFAULT", e == "EFAULT", e)
n = revoke(987654321)
check("REVOKE an unknown tag -> 0 sockets", n == 0, n)
n = revoke(555)
check("REVOKE tag 555 -> 2 sockets shut down", n == 2, n)
check("STATS: revoked_total +2", stats()["revoked"] - s1["revoked"] == 2, stats()["revoked"] - s1["revoked"])
for i, (c, p) in enumerate(pairs[:2]):
    c.settimeout(5)
    try:
        got = c.recv(16)
    except OSError as x:
        got = errno.errorcode.get(x.errno, x.errno)
    check(f"revoked socket {i}: recv -> EOF", got == b"", got)
    e = errname(lambda: c.send(b"x"))
    check(f"revoked socket {i}: send -> EPIPE", e == "EPIPE", e)
    p.settimeout(5)
    check(f"revoked socket {i}: its host peer sees EOF", p.recv(16) == b"")
c3, p3 = pairs[2]
c3.sendall(b"alive")
check("socket of another tag (556) not revoked: send works", p3.recv(16) == b"alive")
p3.sendall(b"still")
check("socket of another tag (556) not revoked: recv works", c3.recv(16) == b"still")
n = revoke(100)
check("REVOKE tag 100 (two authorized, connected sockets) -> 2", n == 2, n)
rc = ta.connect_ex(("127.0.0.1", port2))
check("revoked authorized socket: connect -> EPERM", rc == errno.EPERM, errno.errorcode.get(rc, rc))
check("revoked authorized socket: recv -> EOF", ta.recv(16) == b"")
for sk in [ta, tpeer, t6, t6peer, lst2] + [x for pr in pairs for x in pr]:
    sk.close()

# --- SCM_RIGHTS: the restriction travels with the socket to another process
# A restricted connected socket and a restricted listener are passed over a Unix socket to a fresh
# process (python3 -I -c RECEIVER under setpriv: uid/gid 65534, no groups, no capabilities, no
# inherited fds but its end of the socketpair), and the parent closes its own copies first, so the
# receiver holds the only references. The receiver prints its own "ok/FAIL" lines (re-emitted here
# with a prefix); the parent checks the STATS refusal counters it moved (so the EPERMs are the
# module's, not the missing privileges') and the bytes that crossed both connections.
RECEIVER = r'''
import errno, fcntl, os, socket, struct, sys
SO_BINDTODEVICE, SO_MARK, IP_TRANSPARENT, SO_PEERNAME = 25, 36, 19, 28
SIOCGIFNAME, SIOCGIFCONF, SIOCGIFFLAGS, SIOCGIFADDR, SIOCGIFINDEX = 0x8910, 0x8912, 0x8913, 0x8915, 0x8933
LO = struct.pack("16s24x", b"lo")
fails = 0
def check(name, cond, detail=""):
    global fails
    fails += 0 if cond else 1
    print(("ok   - " if cond else "FAIL - ") + name + (": " + str(detail) if detail != "" else ""), flush=True)
def err(fn):
    try:
        fn()
        return None
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
port, lport = int(sys.argv[1]), int(sys.argv[2])  # host peer, restricted listener
st = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
check("runs as nobody without capabilities", os.getuid() == 65534 and os.getgid() == 65534
      and int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0, (os.getuid(), st["CapEff"]))
check("cannot open /dev/slim", err(lambda: os.open("/dev/slim", os.O_RDWR)) in ("EACCES", "EPERM"))
uxfd = int(sys.argv[3])
extra = [fd for fd in range(3, 1024) if fd != uxfd and err(lambda: os.fstat(fd)) != "EBADF"]
check("inherited no other fd than stdio and its Unix socket", extra == [], extra)
ux = socket.socket(fileno=uxfd)
msg, fds, _, _ = socket.recv_fds(ux, 16, 4)
check("received 2 fds with SCM_RIGHTS", msg == b"fds" and len(fds) == 2, (msg, fds))
c, l = socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
# connected socket
check("connected: getsockname -> virtual", c.getsockname() == ("10.32.0.5", 41000), c.getsockname())
check("connected: getpeername -> virtual", c.getpeername() == ("10.32.0.6", 8080), c.getpeername())
raw = c.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, 16)
check("connected: SO_PEERNAME -> virtual", raw[2:8] == struct.pack(">H", 8080) + bytes([10, 32, 0, 6]), raw.hex())
for name, fn in [
    ("connect to the real peer", lambda: c.connect(("127.0.0.1", port))),
    ("bind", lambda: c.bind(("127.0.0.1", 0))),
    ("listen", lambda: c.listen(1)),
    ("sendto(MSG_FASTOPEN) with an address", lambda: c.sendto(b"x", socket.MSG_FASTOPEN, ("127.0.0.1", port))),
    ("setsockopt SO_BINDTODEVICE lo", lambda: c.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo")),
    ("setsockopt SO_MARK 1", lambda: c.setsockopt(socket.SOL_SOCKET, SO_MARK, 1)),
    ("setsockopt IP_TRANSPARENT 1", lambda: c.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)),
    ("ioctl SIOCGIFINDEX", lambda: fcntl.ioctl(c.fileno(), SIOCGIFINDEX, LO)),
    ("ioctl SIOCGIFADDR", lambda: fcntl.ioctl(c.fileno(), SIOCGIFADDR, LO)),
    ("ioctl SIOCGIFFLAGS", lambda: fcntl.ioctl(c.fileno(), SIOCGIFFLAGS, LO)),
    ("ioctl SIOCGIFNAME", lambda: fcntl.ioctl(c.fileno(), SIOCGIFNAME, struct.pack("16xi20x", 1))),
]:
    e = err(fn)
    check(f"connected: {name} -> EPERM", e == "EPERM", e)
e = err(lambda: fcntl.ioctl(c.fileno(), SIOCGIFCONF, struct.pack("=i4xQ", 0, 0)))
print(f"note: KNOWN GAP (as in the parent): native SIOCGIFCONF -> {e or 'succeeds'}", flush=True)
c.settimeout(10)
got = b""
while len(got) < 11:
    b = c.recv(64)
    if not b:
        break
    got += b
check("connected: recv the bytes the host peer sent", got == b"to-receiver", got)
c.sendall(b"from-receiver;")
# A restricted socket names nothing but its one peer: a sendto with an address is refused, even on
# a connected socket (where TCP itself would ignore the address; the parent checks no byte left).
e = err(lambda: c.sendto(b"via-sendto;", ("127.0.0.1", lport)))
check("connected: sendto with an address -> EPERM", e == "EPERM", e)
# listener
check("listener: getsockname -> virtual", l.getsockname() == ("10.32.0.5", 9000), l.getsockname())
check("listener: getpeername -> ENOTCONN", err(l.getpeername) == "ENOTCONN", err(l.getpeername))
for name, fn in [
    ("connect", lambda: l.connect(("127.0.0.1", port))),
    ("bind", lambda: l.bind(("127.0.0.1", 0))),
    ("listen again", lambda: l.listen(5)),
    ("setsockopt SO_BINDTODEVICE lo", lambda: l.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo")),
    ("ioctl SIOCGIFINDEX", lambda: fcntl.ioctl(l.fileno(), SIOCGIFINDEX, LO)),
]:
    e = err(fn)
    check(f"listener: {name} -> EPERM", e == "EPERM", e)
l.settimeout(10)
ch, a = l.accept()
check("listener: accept -> peer all-zero (not recorded)", a == ("0.0.0.0", 0), a)
check("accepted child: getsockname -> the listener's virtual address", ch.getsockname() == ("10.32.0.5", 9000), ch.getsockname())
e = err(lambda: ch.connect(("127.0.0.1", port)))
check("accepted child: connect -> EPERM", e == "EPERM", e)
e = err(lambda: ch.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo"))
check("accepted child: SO_BINDTODEVICE -> EPERM", e == "EPERM", e)
ch.settimeout(10)
got = ch.recv(64)
check("accepted child: recv the bytes the host client sent", got == b"to-child", got)
ch.sendall(b"from-child")
for s in (ch, l, c, ux):
    s.close()
sys.exit(1 if fails else 0)
'''
REF_KINDS = (REF_CONNECT, REF_BIND, REF_LISTEN, REF_SENDMSG_ADDR, REF_FASTOPEN, REF_SETSOCKOPT, REF_IOCTL)
live0 = stats()["live"]
h = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # an unrestricted host listener
h.bind(("127.0.0.1", 0))
h.listen(8)
hport = h.getsockname()[1]
sc = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sc.connect(("127.0.0.1", hport))
sp, _ = h.accept()
sl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sl.bind(("127.0.0.1", 0))
sl.listen(8)
lport = sl.getsockname()[1]
restrict(sc.fileno(), tag=700, local=addr4([10, 32, 0, 5], 41000), peer=addr4([10, 32, 0, 6], 8080))
restrict(sl.fileno(), flags=1, tag=700, local=addr4([10, 32, 0, 5], 9000), peer=bytes(28))
lc = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # queued on the restricted listener
lc.connect(("127.0.0.1", lport))
lc.sendall(b"to-child")
sp.sendall(b"to-receiver")
check("SCM_RIGHTS setup: 2 more restricted sockets live", stats()["live"] == live0 + 2, stats()["live"] - live0)
ua, ub = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
r0 = stats()
proc = subprocess.Popen(
    ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
     "--bounding-set=-all", "--no-new-privs", "/usr/bin/python3", "-I", "-c", RECEIVER,
     str(hport), str(lport), str(ub.fileno())],
    pass_fds=(ub.fileno(),), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
ub.close()
socket.send_fds(ua, [b"fds"], [sc.fileno(), sl.fileno()])
sc.close()  # from here on only the receiver holds the restricted sockets
sl.close()
try:
    out, _ = proc.communicate(timeout=120)
except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
ua.close()
for line in out.splitlines():
    if line.startswith("ok   - "):
        check("SCM_RIGHTS receiver (nobody): " + line[7:], True)
    elif line.startswith("FAIL - "):
        check("SCM_RIGHTS receiver (nobody): " + line[7:], False, "(see above)")
    else:
        print(f"note: SCM_RIGHTS receiver: {line}")
check("SCM_RIGHTS receiver exited 0", proc.returncode == 0, proc.returncode)
r1 = stats()
dref = {k: r1["ref"][k] - r0["ref"][k] for k in REF_KINDS}
want_ref = {REF_CONNECT: 3, REF_BIND: 2, REF_LISTEN: 2, REF_SENDMSG_ADDR: 1, REF_FASTOPEN: 1,
            REF_SETSOCKOPT: 5, REF_IOCTL: 5}
check("SCM_RIGHTS: the receiver's EPERMs are the module's (STATS refusals: 3 connect, 2 bind, 2 listen, "
      "1 sendto with an address, 1 fastopen, 5 setsockopt, 5 ioctl)", dref == want_ref, dref)
check("SCM_RIGHTS: the accepted child counted (children_total +1)", r1["children"] - r0["children"] == 1,
      r1["children"] - r0["children"])
sp.settimeout(10)
got = b""
want_bytes = b"from-receiver;"
while len(got) < len(want_bytes):
    b = sp.recv(64)
    if not b:
        break
    got += b
check("SCM_RIGHTS: the host peer got the receiver's bytes (a sendto address did not redirect them)",
      got == want_bytes, got)
lc.settimeout(10)
got = lc.recv(64)
check("SCM_RIGHTS: the host client got the accepted child's bytes", got == b"from-child", got)
check("SCM_RIGHTS: the receiver's exit released all three (restricted_live back)", stats()["live"] == live0,
      stats()["live"] - live0)
for sk in (lc, sp, h):
    sk.close()

# A restricted socket still in flight (sent, never received) is released with the Unix socket.
f1 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
restrict(f1.fileno(), tag=701, local=addr4([10, 32, 0, 5], 41001), peer=bytes(28))
ua, ub = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
socket.send_fds(ua, [b"x"], [f1.fileno()])
f1.close()
check("in-flight restricted socket still live while queued", stats()["live"] == live0 + 1, stats()["live"] - live0)
ua.close()
ub.close()
for _ in range(50):
    if stats()["live"] == live0:
        break
    time.sleep(0.1)
check("in-flight restricted socket released when the Unix socket is closed unreceived", stats()["live"] == live0,
      stats()["live"] - live0)

# The same inside a garbage cycle (each of two Unix sockets in flight in the other's queue): only the
# Unix GC frees it, from a workqueue, so the restricted socket's release runs in a kworker (delayed
# fput). The GC is scheduled when any Unix socket is released: a throwaway pair triggers it.
f2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
restrict(f2.fileno(), tag=702, local=addr4([10, 32, 0, 5], 41002), peer=bytes(28))
ua, ub = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
socket.send_fds(ua, [b"x"], [f2.fileno(), ua.fileno()])  # into ub's queue: f2 and ua
socket.send_fds(ub, [b"y"], [ub.fileno()])  # into ua's queue: ub
for sk in (f2, ua, ub):
    sk.close()
# (Any other Unix socket released in the VM may run the GC before the trigger below: not checked.)
print(f"note: restricted socket in the Unix-socket cycle: live {stats()['live'] - live0:+d} before the GC trigger")
for _ in range(50):
    t1, t2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    t1.close()
    t2.close()
    if stats()["live"] == live0:
        break
    time.sleep(0.1)
check("restricted socket in an unreachable Unix-socket cycle: released by the Unix GC", stats()["live"] == live0,
      stats()["live"] - live0)

# --- closing brings restricted_live back to 0 and frees the module references
for sk in (child, c2, lst, cli, srv):
    sk.close()
s = stats()
check("STATS after close: restricted_live=0, restricted_total=12", s["live"] == 0 and s["total"] == 12, s)
check("module refcount back to its value before RESTRICT", module_refcount() == ref0, f"{module_refcount()} (was {ref0})")

os.close(dev)
sys.exit(1 if failures else 0)
