#!/usr/bin/python3
"""Connect by the module (SLIM_RESTRICT_TRANSLATE, issue 15 point 2), run as root inside the test VM by
guest.sh with slim_kern loaded and lo up: a restricted socket's connect(overlay endpoint) is looked up in
the listeners table of its /dev/slim file's table set and connected to the host endpoint by the kernel's
own connect; getpeername answers the overlay endpoint.

    translate_test.py             every check
    translate_test.py --child FD  internal: what a process without privileges can do with a passed socket

Prints one "ok   - ..." or "FAIL - ..." line per check and exits non-zero on any failure. The ioctl
helpers are table_test.py's.
"""
import ctypes
import errno
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import table_test as tt
from table_test import INSERT, REMOVE, RESET, LISTENERS, addr4, addr6, check, errname, op, raw_ioctl, tstats, update

FEAT_TRANSLATE, FEAT_POLICY, FEAT_ADOPT = 1 << 6, 1 << 7, 1 << 8
RESTRICT_LISTENER, RESTRICT_TRANSLATE, RESTRICT_POLICY, RESTRICT_ADOPT = 1, 2, 4, 8
TAG = 41


def restrict(dev, sock, flags=RESTRICT_TRANSLATE, local=None, peer=tt.NONE, tag=TAG):
    if local is None:
        port = sock.getsockname()[1]
        local = addr4([10, 99, 0, 1], port) if sock.family == socket.AF_INET else addr6(mapped([10, 99, 0, 1]), port)
    req = struct.pack("=iIQ", sock.fileno(), flags, tag) + local + peer
    raw_ioctl(dev, tt.IOC_RESTRICT, ctypes.create_string_buffer(req, 72))


def mapped(ip4):
    return bytes(10) + b"\xff\xff" + bytes(ip4)


def row(overlay_ip, overlay_port, host_port, kind=INSERT):
    return op(kind, LISTENERS, addr4(overlay_ip, overlay_port), addr4([127, 0, 0, 1], host_port))


class Greeter:
    """A plain host listener on 127.0.0.1 that writes its word to every connection."""

    def __init__(self, word):
        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(128)
        self.port = self.s.getsockname()[1]
        self.peers = []
        self.word = word
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, peer = self.s.accept()
            except OSError:
                return
            self.peers.append(peer)
            try:
                c.sendall(self.word)
            except OSError:
                pass
            c.close()


def translating(dev, family=socket.AF_INET, blocking=True, flags=RESTRICT_TRANSLATE, tag=TAG):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0) if family == socket.AF_INET else ("::ffff:127.0.0.1", 0))
    restrict(dev, s, flags=flags, tag=tag)
    s.setblocking(blocking)
    return s


def connect_err(s, dst):
    try:
        s.connect(dst)
        return None
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def child(fd):
    """A process without privileges (another container's, say) holding a passed translating socket."""
    s = socket.socket(fileno=fd)
    out = [f"name={s.getsockname()[0]}:{s.getsockname()[1]}"]
    out.append(f"unlisted={connect_err(s, ('10.99.0.9', 80))}")
    e = connect_err(s, ("10.99.0.2", 80))
    out.append(f"listed={e}")
    if e is None:
        out.append(f"got={s.recv(16).decode()}")
        out.append(f"then={s.getsockname()[0]}:{s.getsockname()[1]}")
    print(" ".join(out))
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(int(sys.argv[2]))
    dev = os.open("/dev/slim", os.O_RDWR)
    ver = ctypes.create_string_buffer(16)
    raw_ioctl(dev, tt.IOC_VERSION, ver)
    _, feat, _, _ = struct.unpack("=IIII", ver.raw)
    check("VERSION announces SLIM_FEAT_TRANSLATE", feat & FEAT_TRANSLATE, f"features {feat:#x}")

    hello, other = Greeter(b"HELLO"), Greeter(b"OTHER")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    update(dev, [row([10, 99, 0, 2], 80, hello.port), row([10, 99, 0, 4], 80, closed_port)])
    s0 = tstats(dev)

    # --- blocking connect to a listed overlay endpoint
    s = translating(dev)
    check("before its connect, a translating socket looks fresh: getsockname 0.0.0.0:0, getpeername ENOTCONN",
          s.getsockname() == ("0.0.0.0", 0) and errname(s.getpeername) == "ENOTCONN",
          (s.getsockname(), errname(s.getpeername)))
    e = connect_err(s, ("10.99.0.2", 80))
    got = s.recv(16) if e is None else b""
    check("connect(overlay endpoint) reaches the host listener of its row", e is None and got == b"HELLO", e or got)
    check("getpeername answers the overlay endpoint", e is None and s.getpeername() == ("10.99.0.2", 80), e or s.getpeername())
    check("getsockname answers the restricted local address", s.getsockname()[0] == "10.99.0.1", s.getsockname())
    check("the host listener saw the socket's real host endpoint",
          hello.peers and hello.peers[-1][0] == "127.0.0.1", hello.peers[-1:] if hello.peers else "no connection")
    s.close()

    # --- no row: ENOENT, nothing connected, the socket still usable
    s = translating(dev)
    n0 = len(hello.peers) + len(other.peers)
    e = connect_err(s, ("10.99.0.3", 80))
    check("an overlay endpoint without a row -> ENOENT (the library takes the overlay)", e == "ENOENT", e)
    e = connect_err(s, ("127.0.0.1", hello.port))
    check("a host endpoint given directly -> ENOENT, not reached", e == "ENOENT" and len(hello.peers) + len(other.peers) == n0, e)
    e = connect_err(s, ("10.99.0.2", 80))
    check("after ENOENT the same socket connects to a listed endpoint", e is None and s.recv(16) == b"HELLO", e)
    # Connected: it translates nothing more. Another listed endpoint, the same one again, or the
    # host endpoint it reached: EPERM, as on any restricted socket (no EISCONN that would tell
    # which host endpoint it is connected to).
    errs = [connect_err(s, d) for d in (("10.99.0.4", 80), ("10.99.0.2", 80), ("127.0.0.1", hello.port))]
    check("a connected translating socket refuses every further connect with EPERM", errs == ["EPERM"] * 3, errs)
    s.close()
    s1 = tstats(dev)
    check("TABLE_STATS counts translated connects and ENOENT refusals",
          s1["translated"] - s0["translated"] == 2 and s1["not_found"] - s0["not_found"] == 2,
          f"translated {s0['translated']}->{s1['translated']}, not_found {s0['not_found']}->{s1['not_found']}")

    # --- non-blocking: EINPROGRESS, then writable with SO_ERROR 0
    s = translating(dev, blocking=False)
    r = s.connect_ex(("10.99.0.2", 80))
    _, w, _ = select.select([], [s], [], 5)
    soerr = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    check("non-blocking connect: EINPROGRESS (or done at once), then writable, SO_ERROR 0",
          r in (0, errno.EINPROGRESS) and w and soerr == 0, f"connect_ex {errno.errorcode.get(r, r)}, writable {bool(w)}, SO_ERROR {soerr}")
    check("non-blocking: getpeername answers the overlay endpoint", s.getpeername() == ("10.99.0.2", 80), s.getpeername())
    s.close()

    # --- a row whose host listener is gone: the kernel's ECONNREFUSED, no peer recorded
    s = translating(dev)
    e = connect_err(s, ("10.99.0.4", 80))
    check("blocking connect to a row with no listener -> ECONNREFUSED", e == "ECONNREFUSED", e)
    check("... and getpeername -> ENOTCONN", errname(s.getpeername) == "ENOTCONN", errname(s.getpeername))
    s.close()
    s = translating(dev, blocking=False)
    r = s.connect_ex(("10.99.0.4", 80))
    select.select([], [s], [], 5)
    soerr = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    check("non-blocking connect to a row with no listener: EINPROGRESS, then SO_ERROR ECONNREFUSED",
          r in (errno.EINPROGRESS, errno.ECONNREFUSED) and (soerr == errno.ECONNREFUSED or r == errno.ECONNREFUSED),
          f"connect_ex {errno.errorcode.get(r, r)}, SO_ERROR {errno.errorcode.get(soerr, soerr)}")
    s.close()

    # --- an IPv6 socket reaches an IPv4 overlay endpoint (v4-mapped both ways)
    s = translating(dev, family=socket.AF_INET6)
    e = connect_err(s, ("::ffff:10.99.0.2", 80))
    got = s.recv(16) if e is None else b""
    check("IPv6 socket, v4-mapped overlay endpoint: translated to the v4-mapped host endpoint",
          e is None and got == b"HELLO" and s.getpeername()[:2] == ("::ffff:10.99.0.2", 80), e or (got, s.getpeername()))
    s.close()

    # --- a socket restricted without TRANSLATE keeps today's rule
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    restrict(dev, s, flags=0)
    e = connect_err(s, ("10.99.0.2", 80))
    check("a restricted socket without TRANSLATE: connect(overlay) -> EPERM", e == "EPERM", e)
    s.close()
    s = socket.socket()
    e = errname(lambda: restrict(dev, s, flags=RESTRICT_TRANSLATE | RESTRICT_LISTENER))
    check("TRANSLATE with LISTENER -> EINVAL", e == "EINVAL", e)
    e = errname(lambda: restrict(dev, s, flags=RESTRICT_TRANSLATE, peer=addr4([10, 99, 0, 2], 80)))
    check("TRANSLATE with a peer -> EINVAL (the module sets it)", e == "EINVAL", e)
    s.close()

    # --- the Slim policy (issue 15, point 4): sockets restricted with POLICY connect only where
    # their tag's rows allow; 10.99.0.2:80 and 10.99.0.5:80 are both listed (the same listener)
    check("VERSION announces SLIM_FEAT_POLICY", feat & FEAT_POLICY, f"features {feat:#x}")
    update(dev, [row([10, 99, 0, 5], 80, hello.port),
                 tt.policy(TAG, [10, 99, 0, 2], [255, 255, 255, 255], 80, 80),
                 tt.policy(TAG, [10, 99, 1, 0], [255, 255, 255, 0], 1000, 2000)])
    p0, n0 = tstats(dev), len(hello.peers)
    s = translating(dev, flags=RESTRICT_TRANSLATE | RESTRICT_POLICY)
    e = connect_err(s, ("10.99.0.2", 80))
    check("POLICY: an allowed endpoint is translated and reached", e is None and s.recv(16) == b"HELLO", e)
    s.close()
    denied = []
    for dst, tag in ((("10.99.0.5", 80), TAG), (("10.99.0.2", 80), TAG + 1)):
        s = translating(dev, flags=RESTRICT_TRANSLATE | RESTRICT_POLICY, tag=tag)
        denied.append((connect_err(s, dst), errname(s.getpeername)))
        # The socket is as it was: an allowed endpoint still works on it.
        if tag == TAG:
            e = connect_err(s, ("10.99.0.2", 80))
            denied.append(("after", e is None and s.recv(16) == b"HELLO"))
        s.close()
    p1 = tstats(dev)
    check("POLICY: a listed endpoint the tag's rows do not allow -> ECONNREFUSED, no peer; allowed ones still work",
          denied[0] == ("ECONNREFUSED", "ENOTCONN") and denied[1] == ("after", True), denied)
    check("POLICY: a tag without rows reaches nothing (ECONNREFUSED)", denied[2] == ("ECONNREFUSED", "ENOTCONN"), denied)
    check("POLICY: the denied connects sent nothing (the listener saw the two allowed ones only)",
          len(hello.peers) - n0 == 2, f"{len(hello.peers) - n0} connections")
    check("POLICY: TABLE_STATS counts the denials", p1["policy_denied"] - p0["policy_denied"] == 2,
          f"policy_denied {p0['policy_denied']}->{p1['policy_denied']}")
    s = translating(dev)
    e = connect_err(s, ("10.99.0.5", 80))
    check("without POLICY the same tag's socket is not checked", e is None and s.recv(16) == b"HELLO", e)
    s.close()
    s = socket.socket()
    e = errname(lambda: restrict(dev, s, flags=RESTRICT_POLICY))
    check("POLICY without TRANSLATE -> EINVAL", e == "EINVAL", e)
    s.close()
    update(dev, [row([10, 99, 0, 5], 80, hello.port, kind=REMOVE),
                 tt.policy(TAG, [10, 99, 0, 2], [255, 255, 255, 255], 80, 80, kind=REMOVE),
                 tt.policy(TAG, [10, 99, 1, 0], [255, 255, 255, 0], 1000, 2000, kind=REMOVE)])

    # --- another table set: a socket restricted through another file does not see these rows
    other_dev = os.open("/dev/slim", os.O_RDWR)
    s = translating(other_dev)
    e = connect_err(s, ("10.99.0.2", 80))
    check("a socket of another file's set does not see this set's rows (ENOENT)", e == "ENOENT", e)
    s.close()
    os.close(other_dev)

    # --- the file of a set is closed (its router is gone): its sockets translate nothing more
    gone_dev = os.open("/dev/slim", os.O_RDWR)
    update(gone_dev, [row([10, 99, 0, 2], 80, hello.port)])
    s = translating(gone_dev)
    os.close(gone_dev)
    n0 = len(hello.peers)
    e = connect_err(s, ("10.99.0.2", 80))
    check("after its file is closed, a set's sockets find no row (ENOENT), the listener is not reached",
          e == "ENOENT" and len(hello.peers) == n0, e)
    s.close()

    # --- passed to a process without privileges (SCM_RIGHTS / inheritance): still its owner's socket
    s = translating(dev)
    me = os.path.abspath(__file__)
    r = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", sys.executable, me, "--child", str(s.fileno())],
                       pass_fds=(s.fileno(),), capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(me)})
    out = (r.stdout + r.stderr).strip()
    check("a passed socket answers its owner's address, reaches only listed endpoints, as its owner",
          out.startswith("name=0.0.0.0:0 ") and "unlisted=ENOENT" in out and "listed=None got=HELLO" in out
          and "then=10.99.0.1:" in out, out)
    s.close()

    # --- table updates racing connects: 4 threads connect while rows are replaced, removed, reset
    stop = time.monotonic() + 5
    results = {"HELLO": 0, "OTHER": 0, "ENOENT": 0}
    bad = []
    lock = threading.Lock()

    def connector():
        while time.monotonic() < stop:
            s = translating(dev)
            e = connect_err(s, ("10.99.0.2", 80))
            if e is None:
                try:
                    got = s.recv(16).decode() or "eof"
                except OSError as x:
                    got = errno.errorcode.get(x.errno, str(x))
                key = got
            else:
                key = e
            with lock:
                if key in results:
                    results[key] += 1
                else:
                    bad.append(key)
            s.close()

    def writer():
        k = 0
        while time.monotonic() < stop:
            target = hello.port if k % 2 == 0 else other.port
            prev = other.port if k % 2 == 0 else hello.port
            try:
                if k % 5 == 4:
                    update(dev, [row([10, 99, 0, 2], 80, target)], flags=RESET)
                else:
                    update(dev, [row([10, 99, 0, 2], 80, prev, kind=REMOVE), row([10, 99, 0, 2], 80, target)])
                update(dev, [row([10, 99, 0, 2], 80, target, kind=REMOVE)])
                update(dev, [row([10, 99, 0, 2], 80, target)])
            except tt.Err as x:
                bad.append(f"update {x.name}")
                update(dev, [row([10, 99, 0, 2], 80, target)], flags=RESET)
            k += 1

    update(dev, [row([10, 99, 0, 2], 80, other.port)], flags=RESET)
    threads = [threading.Thread(target=connector) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(f"4 threads connecting while rows change: every connect reached a row's listener or got ENOENT ({results})",
          not bad and results["HELLO"] > 0 and results["OTHER"] > 0 and results["ENOENT"] > 0, f"unexpected: {bad[:5]}")

    accept_checks(dev)
    adopt_checks(dev, feat)

    update(dev, [], flags=RESET)
    os.close(dev)
    return 1 if tt.failures else 0


def accept_checks(dev):
    """Accept by the module (issue 15 point 3): a child of a restricted listener is identified from its
    set's tables when its client's host endpoint is leased and the listener's host endpoint serves one
    overlay endpoint; otherwise its peer stays all-zero (the router is asked)."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    lport = lst.getsockname()[1]
    restrict(dev, lst, flags=RESTRICT_LISTENER, local=addr4([0, 0, 0, 0], 80))
    leased = socket.socket()
    leased.bind(("127.0.0.1", 0))
    cport = leased.getsockname()[1]
    update(dev, [op(INSERT, LISTENERS, addr4([10, 99, 0, 5], 80), addr4([127, 0, 0, 1], lport)),
                 op(INSERT, tt.LEASES, addr4([127, 0, 0, 1], cport), addr4([10, 99, 0, 7]))], flags=RESET)

    def accepted(client):
        client.connect(("127.0.0.1", lport))
        c, a = lst.accept()
        out = (a, c.getsockname(), c.getpeername())
        c.close()
        client.close()
        return out

    a, local, peer = accepted(leased)
    check("a child whose client port is leased: peer = the holder's overlay address and the leased port",
          peer == ("10.99.0.7", cport) and a == peer, (a, peer))
    check("... and local = the one overlay endpoint its host listener serves (a wildcard listener)",
          local == ("10.99.0.5", 80), local)
    a, local, peer = accepted(socket.socket())
    check("a child whose client port is not leased: not identified (all-zero peer; the router is asked)",
          peer == ("0.0.0.0", 0), peer)
    # A host listener serving two overlay endpoints of one family: the lease does not say which.
    leased = socket.socket()
    leased.bind(("127.0.0.1", 0))
    update(dev, [op(INSERT, LISTENERS, addr4([10, 99, 0, 6], 80), addr4([127, 0, 0, 1], lport)),
                 op(INSERT, tt.LEASES, addr4([127, 0, 0, 1], leased.getsockname()[1]), addr4([10, 99, 0, 7]))])
    a, local, peer = accepted(leased)
    check("a host listener of two overlay endpoints: not identified", peer == ("0.0.0.0", 0), peer)
    lst.close()


def adopt_checks(dev, feat):
    """SLIM_RESTRICT_ADOPT: a restarted router (another /dev/slim file) takes over a restricted listener
    of the same tag and local address: its children are then identified from the new file's tables,
    not the old one's (which its router's exit empties). Anything else is EEXIST; an unrestricted
    socket is restricted as without the flag."""
    check("VERSION announces SLIM_FEAT_ADOPT", feat & FEAT_ADOPT, f"features {feat:#x}")
    old_dev = os.open("/dev/slim", os.O_RDWR)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)
    lport = lst.getsockname()[1]
    here = addr4([0, 0, 0, 0], 80)
    restrict(old_dev, lst, flags=RESTRICT_LISTENER, local=here)
    os.close(old_dev)  # the old router is gone: its set goes with its last socket's reference
    leased = socket.socket()
    leased.bind(("127.0.0.1", 0))
    cport = leased.getsockname()[1]
    update(dev, [op(INSERT, LISTENERS, addr4([10, 99, 0, 5], 80), addr4([127, 0, 0, 1], lport)),
                 op(INSERT, tt.LEASES, addr4([127, 0, 0, 1], cport), addr4([10, 99, 0, 7]))], flags=RESET)
    e = errname(lambda: restrict(dev, lst, flags=RESTRICT_LISTENER, local=here))
    check("RESTRICT of a restricted listener without ADOPT -> EEXIST", e == "EEXIST", e)
    e = errname(lambda: restrict(dev, lst, flags=RESTRICT_LISTENER | RESTRICT_ADOPT, local=here, tag=TAG + 1))
    check("ADOPT with another tag -> EEXIST", e == "EEXIST", e)
    e = errname(lambda: restrict(dev, lst, flags=RESTRICT_LISTENER | RESTRICT_ADOPT, local=addr4([0, 0, 0, 0], 81)))
    check("ADOPT with another local address -> EEXIST", e == "EEXIST", e)
    e = errname(lambda: restrict(dev, lst, flags=RESTRICT_ADOPT, local=here))
    check("ADOPT without LISTENER -> EINVAL", e == "EINVAL", e)
    e = errname(lambda: restrict(dev, lst, flags=RESTRICT_LISTENER | RESTRICT_ADOPT, local=here))
    check("ADOPT of the listener by a new file (same tag and local address) -> 0", e is None, e)
    leased.connect(("127.0.0.1", lport))
    c, a = lst.accept()
    check("after ADOPT, a child is identified from the new file's tables",
          c.getpeername() == ("10.99.0.7", cport) and c.getsockname() == ("10.99.0.5", 80),
          (c.getsockname(), c.getpeername()))
    c.close()
    leased.close()
    s = translating(dev)
    e = errname(lambda: restrict(dev, s, flags=RESTRICT_LISTENER | RESTRICT_ADOPT, local=here))
    check("ADOPT of a restricted socket that is not a listener -> EEXIST", e == "EEXIST", e)
    s.close()
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen(4)
    e = errname(lambda: restrict(dev, plain, flags=RESTRICT_LISTENER | RESTRICT_ADOPT, local=here))
    check("ADOPT of an unrestricted listener restricts it (getsockname answers the virtual address)",
          e is None and plain.getsockname() == ("0.0.0.0", 80), (e, plain.getsockname()))
    plain.close()
    lst.close()


if __name__ == "__main__":
    sys.exit(main())
