#!/usr/bin/python3
"""SLIM_IOC_RESTRICT end to end, run as root inside the test VM by guest.sh (module loaded, lo up).

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
REF_CONNECT, REF_BIND, REF_LISTEN, REF_SENDMSG_ADDR, REF_FASTOPEN = range(5)

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

# --- dup() and fork() see the same socket, so the same restriction
d = socket.socket(fileno=os.dup(cli.fileno()))
e = errname(lambda: d.connect(("127.0.0.1", port)))
want[REF_CONNECT] += 1
check("dup()ed fd: connect -> EPERM", e == "EPERM", e)
e = errname(lambda: restrict(d.fileno()))
check("RESTRICT again (via the dup) -> EEXIST", e == "EEXIST", e)
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
    os._exit(rc)
_, status = os.waitpid(pid, 0)
want[REF_CONNECT] += 1
want[REF_BIND] += 1
check("fork()ed child: connect and bind -> EPERM, send works", os.waitstatus_to_exitcode(status) == 0, status)
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
child.sendall(b"hi")
check("accepted child carries data", c2.recv(16) == b"hi")
s = stats()
check("STATS: children_total=1, live=3 (client, listener, child)", s["children"] == 1 and s["live"] == 3, s)

# --- closing brings restricted_live back to 0 and frees the module references
for sk in (child, c2, lst, cli, srv):
    sk.close()
s = stats()
check("STATS after close: restricted_live=0, restricted_total=3", s["live"] == 0 and s["total"] == 3, s)
check("module refcount back to its value before RESTRICT", module_refcount() == ref0, f"{module_refcount()} (was {ref0})")

os.close(dev)
sys.exit(1 if failures else 0)
