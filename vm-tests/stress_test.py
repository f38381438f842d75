#!/usr/bin/python3
"""Concurrency stress of slim_kern, run as root inside the test VM by guest.sh (module loaded, lo up),
after restrict_test.py: a few seconds of threads racing the module's ioctls against each other and
against the socket calls that reach its restricted proto_ops, so that KASAN and lockdep (guest.sh
checks the kernel log afterwards) see the interleavings a single-threaded test never produces.

Main process, 7 threads over a shared pool of restricted sockets (listeners, connected clients,
accepted children; at most POOL_MAX):
  listener-maker  new TCP listener, RESTRICT with SLIM_RESTRICT_LISTENER (tag one of TAGS)
  client-maker    new client connecting to a pool listener's real port, then RESTRICT (connected)
  acceptor        non-blocking accept on a pool listener (children inherit the restriction)
  child-worker    SET_CHILD_ADDRS on children, RESTRICT again (EEXIST), getsockname/getpeername
  closer          closes pool sockets it did not create
  revoker         REVOKE of a random tag in TAGS
  stats           STATS, checking its invariants on every read
A thread leases a pool socket for each operation on its fd (the closer skips leased ones), so a
result is never about a reused fd number and the answers can be checked exactly. The racing of
close against an ioctl on the SAME fd is done in a forked process (its own fd table, so a number
freed by the close cannot be reused by another thread's new socket in the window): two threads
meet at a barrier, one closes the fd while the other is (or is about to be) in RESTRICT / accept /
SET_CHILD_ADDRS on it, or in REVOKE of its tag; and REVOKE of a listener's tag against an accept on
it, after which an accepted child must have been shut down too (REVOKE has returned: had it run
before the accept, the accept would have failed).

Errnos accepted as legitimate (anything else is a failure):
  connect           ECONNREFUSED, ECONNRESET, timeout (the listener was closed or revoked, or its
                    accept queue was full and the SYN dropped: the kernel's answers, not the module's)
  accept            EAGAIN (non-blocking, nothing queued), EINVAL (the listener was revoked: REVOKE
                    shuts it down, it leaves TCP_LISTEN). Never ECONNABORTED: every accepted child
                    gets its table entry, so getname answers and do_accept does not abort it (the
                    entry's room, reserved before the original accept, may be taken by a concurrent
                    RESTRICT; the module then grows the table under its mutex)
  RESTRICT again    EEXIST (always: every pool socket is restricted)
  race ioctl/accept EBADF when the close won the race (the ioctl's fget came after it)
  race accept       also EAGAIN / EINVAL as above (also against REVOKE)
Everything else must succeed: RESTRICT of a new socket, SET_CHILD_ADDRS on a child (also after
REVOKE), REVOKE, STATS, close. Virtual addresses are checked right after each RESTRICT / accept /
SET_CHILD_ADDRS (getsockname and getpeername answer exactly what the module was told).

At the end every socket is closed; then restricted_live must be 0 again, restricted_total /
children_total / revoked_total must have grown by what the ioctls reported, and the module's
refcount must be back where it was (so guest.sh's rmmod afterwards can succeed). Prints one
"ok   - ..." / "FAIL - ..." line per check and a "summary:" line with the operation counts.
"""
import collections
import ctypes
import errno
import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time
import traceback

DURATION = float(os.environ.get("SLIM_STRESS_SECONDS", "8"))
POOL_MAX = 48
TAGS = [0, 0x51, 0x52, 0x53]

IOC_WRITE, IOC_READ = 1, 2


def ioc(d, nr, size):
    return (d << 30) | (size << 16) | (ord("S") << 8) | nr


IOC_RESTRICT = ioc(IOC_WRITE, 1, 72)
IOC_CHILD = ioc(IOC_WRITE, 3, 64)
IOC_REVOKE = ioc(IOC_READ | IOC_WRITE, 4, 16)
IOC_STATS = ioc(IOC_READ, 5, 160)
SOCK_NONBLOCK, SOCK_CLOEXEC = 0o4000, 0o2000000

# ctypes calls release the GIL for the duration of the syscall, so threads really are in the kernel
# at the same time (2 vCPUs); Python's own fcntl.ioctl and socket methods are avoided on shared fds.
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.close.argtypes = [ctypes.c_int]
libc.accept4.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
libc.getsockname.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.getpeername.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.recv.restype = ctypes.c_ssize_t

dev = os.open("/dev/slim", os.O_RDWR | os.O_CLOEXEC)


def addr4(ip, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + bytes(ip) + bytes(20)


def ename(e):
    return errno.errorcode.get(e, str(e))


class Err(Exception):
    def __init__(self, e):
        super().__init__(ename(e))
        self.name = ename(e)


def ioctl(cmd, payload):
    """ioctl on /dev/slim with a copy of payload; returns the (possibly updated) bytes."""
    buf = ctypes.create_string_buffer(payload, len(payload))
    if libc.ioctl(dev, cmd, buf) != 0:
        raise Err(ctypes.get_errno())
    return buf.raw


def restrict(fd, flags, tag, local, peer):
    ioctl(IOC_RESTRICT, struct.pack("=iIQ", fd, flags, tag) + local + peer)


def child_addrs(fd, local, peer):
    ioctl(IOC_CHILD, struct.pack("=iI", fd, 0) + local + peer)


def revoke(tag):
    return struct.unpack("=QII", ioctl(IOC_REVOKE, struct.pack("=QII", tag, 0, 0)))[2]


def stats():
    v = struct.unpack("=4Q16Q", ioctl(IOC_STATS, bytes(160)))
    return {"live": v[0], "total": v[1], "children": v[2], "revoked": v[3]}


def close(fd):
    if libc.close(fd) != 0:
        raise Err(ctypes.get_errno())


def getname(fd, peer=False):
    """The raw sockaddr getsockname/getpeername answers, first 8 bytes (family, port, IPv4)."""
    buf = ctypes.create_string_buffer(28)
    ln = ctypes.c_uint32(28)
    if (libc.getpeername if peer else libc.getsockname)(fd, buf, ctypes.byref(ln)) != 0:
        raise Err(ctypes.get_errno())
    return buf.raw[:8]


def accept(fd):
    buf = ctypes.create_string_buffer(28)
    ln = ctypes.c_uint32(28)
    c = libc.accept4(fd, buf, ctypes.byref(ln), SOCK_NONBLOCK | SOCK_CLOEXEC)
    if c < 0:
        raise Err(ctypes.get_errno())
    return c, buf.raw[:8]


def module_refcount():
    with open("/proc/modules") as f:
        for line in f:
            p = line.split()
            if p[0] == "slim_kern":
                return int(p[2])
    return None


def vaddr(tag, host, port):
    return addr4([10, 32, TAGS.index(tag), host], port)


class Tally:
    """Operation counts, errno counts and unexpected outcomes, shared by the threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = collections.Counter()
        self.errs = collections.Counter()
        self.unexpected = []

    def op(self, name, n=1):
        with self.lock:
            self.ops[name] += n

    def err(self, name, e, allowed):
        with self.lock:
            self.errs[f"{name}:{e}"] += 1
            if e not in allowed:
                self.unexpected.append(f"{name} -> {e}")

    def bad(self, what):
        with self.lock:
            self.unexpected.append(what)


def run(tally, name, fn, allowed=()):
    """fn(); counts it under name; an Err is recorded (unexpected unless allowed). Returns fn's result
    or None on error."""
    try:
        r = fn()
        tally.op(name)
        return r if r is not None else True
    except Err as x:
        tally.op(name)
        tally.err(name, x.name, allowed)
        return None


# ---------------------------------------------------------------------------------------------
# The forked racer: close of an fd against an ioctl / accept on it, and against REVOKE of its tag.

RACE_TAG = 0x99
# The racer's own loopback address: the main process's client-maker connects to 127.0.0.1 ports of
# its pool's listeners, and a port number the racer's listener reuses must not draw those connects.
RACE_IP = "127.0.0.2"


def tcp_rows(port):
    """/proc/net/tcp rows with local or remote port `port` (state, queues): for a failure message."""
    want = f":{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            rows = [" ".join(line.split()[1:5]) for line in f if want in line]
    except OSError as x:
        return f"/proc/net/tcp: {x}"
    return "; ".join(rows) or "no /proc/net/tcp row"


def racer(deadline, wfd):
    tally = Tally()
    out = {"restricted": 0, "children": 0, "revoked": 0}
    barrier = threading.Barrier(2)
    slot = {}

    def closer_side():
        rnd = random.Random(1)
        while True:
            barrier.wait()
            fd = slot["fd"]
            if fd is None:
                return
            # A varying head start (0 .. ~0.5 ms) moves the close across the other side's syscall.
            for _ in range(rnd.choice([0, 0, 1, 5, 20, 100])):
                pass
            if slot.get("revoke") is not None:  # kind 4: REVOKE instead of close
                tag = slot["revoke"]
                out["revoked"] += run(tally, "race:revoke_vs_accept", lambda: revoke(tag)) or 0
            else:
                run(tally, "race:close", lambda: close(fd))
            barrier.wait()

    t = threading.Thread(target=closer_side, daemon=True)
    t.start()
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind((RACE_IP, 0))
    lst.listen(64)
    lport = lst.getsockname()[1]
    lst.setblocking(False)
    restrict(lst.fileno(), 1, RACE_TAG, addr4([10, 33, 0, 1], 80), bytes(28))
    out["restricted"] += 1
    rounds = 0
    try:
        while time.monotonic() < deadline:
            kind = rounds % 5
            rounds += 1
            extra = []  # fds of this round to close afterwards (owned by this thread)
            slot["revoke"] = None
            if kind == 4:  # accept on a restricted listener (a client queued) vs REVOKE of its tag
                l2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                l2.bind((RACE_IP, 0))
                l2.listen(8)
                l2.setblocking(False)
                p2 = l2.getsockname()[1]
                fd = l2.detach()
                extra.append(fd)
                restrict(fd, 1, RACE_TAG + 2, addr4([10, 33, 0, 4], 80), bytes(28))
                out["restricted"] += 1
                c = socket.create_connection((RACE_IP, p2), timeout=5)
                extra.append(c.detach())
                slot["revoke"] = RACE_TAG + 2
                got = []

                def op(fd=fd):
                    ch, _ = accept(fd)
                    out["children"] += 1
                    extra.append(ch)
                    got.append(ch)
                name, allowed = "race:accept_vs_revoke", ("EAGAIN", "EINVAL")
            elif kind == 0:  # RESTRICT of a new socket vs close
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                fd = s.detach()

                def op(fd=fd):
                    restrict(fd, 0, RACE_TAG, addr4([10, 33, 0, 2], 1000), bytes(28))
                    out["restricted"] += 1
                name, allowed = "race:restrict", ("EBADF",)
            elif kind == 1:  # accept on a restricted listener (a client queued) vs close of the listener
                c = socket.create_connection((RACE_IP, lport), timeout=5)
                extra.append(c.detach())
                fd = lst.detach()

                def op(fd=fd):
                    ch, _ = accept(fd)
                    out["children"] += 1
                    extra.append(ch)
                name, allowed = "race:accept", ("EBADF", "EAGAIN", "EINVAL")
            else:  # an accepted child: SET_CHILD_ADDRS on it vs its close (2); its client, restricted
                # with a tag of its own: REVOKE of that tag vs the client's close (3)
                c = socket.create_connection((RACE_IP, lport), timeout=5)
                cfd = c.detach()
                ch = None
                wait_until = time.monotonic() + 30
                while time.monotonic() < wait_until:
                    try:
                        ch, _ = accept(lst.fileno())
                        out["children"] += 1
                        break
                    except Err as x:
                        if x.name != "EAGAIN":
                            raise
                        select.select([lst], [], [], 0.05)
                if ch is None:
                    close(cfd)
                    raise RuntimeError(f"racer: no connection to accept in 30 s: {tcp_rows(lport)}")
                if kind == 2:
                    fd = ch
                    extra.append(cfd)

                    def op(fd=fd):
                        child_addrs(fd, addr4([10, 33, 0, 1], 80), addr4([10, 33, 0, 9], 5000))
                    name, allowed = "race:set_child_addrs", ("EBADF",)
                else:
                    fd = cfd
                    extra.append(ch)
                    restrict(cfd, 0, RACE_TAG + 1, addr4([10, 33, 0, 3], 1000), addr4([10, 33, 0, 1], 80))
                    out["restricted"] += 1

                    def op():
                        out["revoked"] += revoke(RACE_TAG + 1)
                    name, allowed = "race:revoke", ()
            slot["fd"] = fd
            barrier.wait()
            run(tally, name, op, allowed)
            barrier.wait()
            if kind == 4 and got:
                # REVOKE has returned. Either it ran before the accept (the listener was shut down,
                # its queue purged: accept fails) or it must have shut this child down too (then
                # recv answers EOF at once: the client sent nothing). A child still open escaped it.
                buf = ctypes.create_string_buffer(8)
                n = libc.recv(got[0], buf, 8, socket.MSG_DONTWAIT)
                if n == 0:
                    tally.op("race:accept_vs_revoke:child_shut_down")
                else:
                    tally.op("race:accept_vs_revoke:child_escaped")
                    tally.bad("child accepted during REVOKE of its listener's tag is not shut down "
                              f"(recv -> {n if n > 0 else ename(ctypes.get_errno())})")
            for x in extra:
                close(x)
            if kind == 1:  # a new restricted listener for the next rounds
                lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                lst.bind((RACE_IP, 0))
                lst.listen(64)
                lport = lst.getsockname()[1]
                lst.setblocking(False)
                restrict(lst.fileno(), 1, RACE_TAG, addr4([10, 33, 0, 1], 80), bytes(28))
                out["restricted"] += 1
    except Exception:
        tally.bad("racer: " + traceback.format_exc().replace("\n", " | "))
    slot["fd"] = None
    try:
        barrier.wait(timeout=10)
    except threading.BrokenBarrierError:
        pass
    lst.close()
    out.update(ops=dict(tally.ops), errs=dict(tally.errs), unexpected=tally.unexpected)
    os.write(wfd, json.dumps(out).encode())
    os.close(wfd)


# ---------------------------------------------------------------------------------------------
# The main process's threads over a pool of restricted sockets.

class Entry:
    def __init__(self, fd, kind, tag, local, peer=bytes(28), port=0):
        self.fd, self.kind, self.tag, self.local, self.peer, self.port = fd, kind, tag, local, peer, port
        self.leased = False
        # Its tag was revoked since it joined the pool (a hint only, for picking useful sockets: a
        # socket restricted just before a REVOKE but added just after it is revoked but not marked).
        self.revoked = False


class Pool:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries = []

    def add(self, e):
        with self.lock:
            self.entries.append(e)

    def size(self):
        with self.lock:
            return len(self.entries)

    def lease(self, kinds, unrevoked=False):
        with self.lock:
            c = [e for e in self.entries if not e.leased and e.kind in kinds and not (unrevoked and e.revoked)]
            if not c:
                return None
            e = random.choice(c)
            e.leased = True
            return e

    def unlease(self, e):
        with self.lock:
            e.leased = False

    def take(self):
        """Removes an unleased entry, a revoked one if there is one (the caller then owns its fd)."""
        with self.lock:
            c = [e for e in self.entries if not e.leased]
            c = [e for e in c if e.revoked] or c
            if not c:
                return None
            e = random.choice(c)
            self.entries.remove(e)
            return e

    def ports(self):
        with self.lock:
            return [e.port for e in self.entries if e.kind == "listener" and not e.revoked]

    def mark_revoked(self, tag):
        with self.lock:
            for e in self.entries:
                if e.tag == tag:
                    e.revoked = True


def main():
    print(f"stress: {DURATION:.0f} s, 7 threads + a forked close-vs-ioctl racer (2 threads), pool <= {POOL_MAX}")
    t0 = time.monotonic()
    s0 = stats()
    ref0 = module_refcount()
    deadline = time.monotonic() + DURATION
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 0
        try:
            racer(deadline, wfd)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(wfd)

    tally = Tally()
    pool = Pool()
    res = {"restricted": 0, "children": 0, "revoked": 0, "stats_reads": 0}
    res_lock = threading.Lock()

    def add_res(k, n=1):
        with res_lock:
            res[k] += n

    def expect_name(what, fd, peer, want):
        got = run(tally, "getpeername" if peer else "getsockname", lambda: getname(fd, peer))
        if got is not None and got != want[:8]:
            tally.bad(f"{what}: {'getpeername' if peer else 'getsockname'} -> {got.hex()}, want {want[:8].hex()}")

    def listener_maker():
        while time.monotonic() < deadline:
            if pool.size() >= POOL_MAX:
                time.sleep(0.005)
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            s.setblocking(False)
            port = s.getsockname()[1]
            fd = s.detach()
            tag = random.choice(TAGS)
            local = vaddr(tag, 1, 2000 + random.randrange(1000))
            if run(tally, "restrict:listener", lambda: restrict(fd, 1, tag, local, bytes(28))):
                add_res("restricted")
                expect_name("restricted listener", fd, False, local)
                pool.add(Entry(fd, "listener", tag, local, port=port))
            else:
                close(fd)
            time.sleep(0.003)

    def client_maker():
        while time.monotonic() < deadline:
            ports = pool.ports()
            if not ports or pool.size() >= POOL_MAX:
                time.sleep(0.005)
                continue
            port = random.choice(ports)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", port))
                tally.op("connect")
            except socket.timeout:
                tally.op("connect")
                tally.err("connect", "timeout", ("timeout",))
                s.close()
                continue
            except OSError as x:
                tally.op("connect")
                tally.err("connect", ename(x.errno), ("ECONNREFUSED", "ECONNRESET"))
                s.close()
                continue
            fd = s.detach()
            tag = random.choice(TAGS)
            local = vaddr(tag, 2, 3000 + random.randrange(1000))
            peer = vaddr(tag, 1, port % 1000 + 2000)
            if run(tally, "restrict:client", lambda: restrict(fd, 0, tag, local, peer)):
                add_res("restricted")
                expect_name("restricted client", fd, False, local)
                expect_name("restricted client", fd, True, peer)
                pool.add(Entry(fd, "client", tag, local, peer))
            else:
                close(fd)

    def acceptor():
        while time.monotonic() < deadline:
            e = pool.lease(("listener",), unrevoked=random.random() < 0.9)
            if e is None:
                time.sleep(0.005)
                continue
            try:
                select.select([e.fd], [], [], 0.02)
                try:
                    tally.op("accept")
                    c, a = accept(e.fd)
                except Err as x:
                    tally.err("accept", x.name, ("EAGAIN", "EINVAL"))
                    continue
                add_res("children")
                if a != struct.pack("=H", socket.AF_INET) + bytes(6):
                    tally.bad(f"accept on a restricted listener: peer address {a.hex()}, want all-zero")
                # The child inherits the restriction, the tag and (until SET_CHILD_ADDRS) the listener's
                # virtual local address; its peer is the all-zero address.
                expect_name("accepted child", c, False, e.local)
                expect_name("accepted child", c, True, struct.pack("=H", socket.AF_INET) + bytes(26))
                pool.add(Entry(c, "child", e.tag, e.local))
            finally:
                pool.unlease(e)

    def child_worker():
        while time.monotonic() < deadline:
            e = pool.lease(("child", "client", "listener"))
            if e is None:
                time.sleep(0.005)
                continue
            try:
                if e.kind == "child":
                    local = vaddr(e.tag, 1, 4000 + random.randrange(1000))
                    peer = vaddr(e.tag, 100 + random.randrange(100), 5000 + random.randrange(1000))
                    if run(tally, "set_child_addrs", lambda: child_addrs(e.fd, local, peer)):
                        e.local, e.peer = local, peer
                    expect_name("child after SET_CHILD_ADDRS", e.fd, False, e.local)
                    expect_name("child after SET_CHILD_ADDRS", e.fd, True, e.peer)
                elif e.kind == "listener":
                    got = run(tally, "getpeername", lambda: getname(e.fd, True), ("ENOTCONN",))
                    if got is not None:
                        tally.bad(f"restricted listener: getpeername answered {got.hex()}")
                else:
                    expect_name("restricted client", e.fd, True, e.peer)
                r = run(tally, "restrict:again",
                        lambda: restrict(e.fd, 0, e.tag, e.local, bytes(28)), ("EEXIST",))
                if r is not None:
                    tally.bad(f"RESTRICT of an already restricted {e.kind} succeeded")
            finally:
                pool.unlease(e)
            time.sleep(0.001)

    def closer():
        while time.monotonic() < deadline:
            if pool.size() <= 8:
                time.sleep(0.004)
                continue
            e = pool.take()
            if e is not None:
                run(tally, "close", lambda: close(e.fd))
            time.sleep(0.002)

    def revoker():
        while time.monotonic() < deadline:
            tag = random.choice(TAGS)
            n = run(tally, "revoke", lambda: revoke(tag))
            if n is not None and n is not True:
                add_res("revoked", n)
            pool.mark_revoked(tag)
            time.sleep(0.1)

    def stats_reader():
        while time.monotonic() < deadline:
            st = run(tally, "stats", stats)
            if st:
                add_res("stats_reads")
                # live counts sockets alive now: never more than were ever restricted or inherited,
                # and never "negative" (a u64 underflow of the counter).
                if st["live"] > st["total"] + st["children"] or st["live"] >= 1 << 32:
                    tally.bad(f"STATS inconsistent: {st}")
            time.sleep(0.005)

    def guarded(fn):
        def w():
            try:
                fn()
            except Exception:
                tally.bad(f"{fn.__name__}: " + traceback.format_exc().replace("\n", " | "))
        return w

    threads = [threading.Thread(target=guarded(f), name=f.__name__)
               for f in (listener_maker, client_maker, acceptor, child_worker, closer, revoker, stats_reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DURATION + 60)
    hung = [t.name for t in threads if t.is_alive()]

    # The forked racer's report.
    data = b""
    while True:
        b = os.read(rfd, 65536)
        if not b:
            break
        data += b
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    try:
        rr = json.loads(data)
    except ValueError:
        rr = {"restricted": 0, "children": 0, "revoked": 0, "ops": {}, "errs": {},
              "unexpected": [f"racer sent no report (exit status {status})"]}
    if os.waitstatus_to_exitcode(status) != 0:
        rr["unexpected"].append(f"racer exit status {os.waitstatus_to_exitcode(status)}")

    # Close everything left.
    left = len(pool.entries)
    for e in pool.entries:
        run(tally, "close", lambda: close(e.fd))
    pool.entries.clear()
    st = stats()
    for _ in range(50):
        if st["live"] == 0:
            break
        time.sleep(0.1)
        st = stats()

    failures = 0

    def check(name, cond, detail=""):
        nonlocal failures
        failures += 0 if cond else 1
        print(("ok   - " if cond else "FAIL - ") + name + (f": {detail}" if detail != "" else ""))

    ops = collections.Counter(tally.ops)
    ops.update(rr["ops"])
    errs = collections.Counter(tally.errs)
    errs.update(rr["errs"])
    unexpected = tally.unexpected + rr["unexpected"]
    print("summary: " + " ".join(f"{k}={v}" for k, v in sorted(ops.items())) + f" (left open at the end: {left}; {time.monotonic() - t0:.1f} s)")
    print("summary: errnos " + (" ".join(f"{k}={v}" for k, v in sorted(errs.items())) or "none"))
    check("stress: all threads finished", not hung, hung)
    check(f"stress: no unexpected error or wrong answer in {sum(ops.values())} operations",
          not unexpected, "; ".join(unexpected[:10]) + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    kinds = ["restrict:listener", "restrict:client", "restrict:again", "connect", "accept", "set_child_addrs",
             "close", "revoke", "stats", "race:restrict", "race:accept", "race:set_child_addrs", "race:revoke",
             "race:close", "race:accept_vs_revoke", "race:revoke_vs_accept"]
    missing = [k for k in kinds if ops[k] == 0]
    check("stress: every operation kind ran", not missing, f"never ran: {missing}" if missing else "")
    # Whether the close really overlapped the ioctl is up to the scheduler; both outcomes showing up
    # (the ioctl before the close, and EBADF after it) means the two sides were close together.
    won = {k: (ops[k] - errs[f"{k}:EBADF"], errs[f"{k}:EBADF"])
           for k in ("race:restrict", "race:accept", "race:set_child_addrs")}
    print("note: close-vs-ioctl races (ioctl first, close first/EBADF): "
          + " ".join(f"{k[5:]}={a}/{b}" for k, (a, b) in won.items()))
    check("stress: STATS invariants held in every read", res["stats_reads"] > 0, f"{res['stats_reads']} reads")
    d_total = st["total"] - s0["total"]
    check("stress: restricted_total grew by the successful RESTRICTs", d_total == res["restricted"] + rr["restricted"],
          f"+{d_total}, RESTRICT succeeded {res['restricted']} + {rr['restricted']} times")
    d_rev = st["revoked"] - s0["revoked"]
    check("stress: revoked_total grew by the sum of REVOKE's answers", d_rev == res["revoked"] + rr["revoked"],
          f"+{d_rev}, REVOKE answered {res['revoked']} + {rr['revoked']}")
    d_ch = st["children"] - s0["children"]
    acc = res["children"] + rr["children"]
    check("stress: children_total grew by the accepted children", d_ch == acc, f"+{d_ch}, {acc} accepted")
    check("stress: restricted_live back to 0 after closing everything", st["live"] == 0, st)
    check("stress: module refcount back to its value before the stress", module_refcount() == ref0,
          f"{module_refcount()} (was {ref0})")
    os.close(dev)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
