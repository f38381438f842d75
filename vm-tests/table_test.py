#!/usr/bin/python3
"""The table ioctls of uapi/src/kabi_tables.rs (TABLE_UPDATE, TABLE_DUMP, TABLE_STATS), run as root
inside the test VM by guest.sh with slim_kern loaded.

    table_test.py              everything but the limit (module loaded with the default table_limit)
    table_test.py --limit N    ENOSPC and its counter (module loaded with table_limit=N)
    table_test.py --child FD   internal: one TABLE_UPDATE/DUMP/STATS each on FD, prints the errnos

Prints one "ok   - ..." or "FAIL - ..." line per check and exits non-zero on any failure. Struct
layouts and ioctl numbers are computed here from the sizes kabi_tables.rs asserts.
"""
import ctypes
import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time

IOC_WRITE, IOC_READ = 1, 2
MAGIC = ord("S")


def ioc(d, nr, size):
    return (d << 30) | (size << 16) | (MAGIC << 8) | nr


OP_FMT, UPD_FMT, DUMP_FMT, STATS_FMT = "=HHIQ28s28s", "=IIQQII", "=HHIIIQIIQ", "=19Q"
assert [struct.calcsize(f) for f in (OP_FMT, UPD_FMT, DUMP_FMT, STATS_FMT)] == [72, 32, 40, 152]
IOC_VERSION = ioc(IOC_READ, 0, 16)
IOC_RESTRICT = ioc(IOC_WRITE, 1, 72)
IOC_UPDATE = ioc(IOC_READ | IOC_WRITE, 6, 32)
IOC_DUMP = ioc(IOC_READ | IOC_WRITE, 7, 40)
IOC_TSTATS = ioc(IOC_READ, 8, 152)
FEAT_TABLES = 1 << 5
LISTENERS, LEASES, IDENTITIES, POLICY = 1, 2, 3, 4
INSERT, REMOVE = 1, 2
RESET = 1
BATCH_MAX = 1024
NO_INDEX = 0xFFFFFFFF


def _kabi_version():
    import re
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "uapi", "src", "kabi.rs")
    with open(src) as f:
        return int(re.search(r"pub const KABI_VERSION: u32 = (\d+);", f.read()).group(1))


KABI_VERSION = _kabi_version()

libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

failures = 0


def check(name, cond, detail=""):
    global failures
    if cond:
        print(f"ok   - {name}{': ' + str(detail) if detail != '' else ''}", flush=True)
    else:
        failures += 1
        print(f"FAIL - {name}: {detail}", flush=True)


class Err(Exception):
    def __init__(self, e, hdr=None):
        super().__init__(errno.errorcode.get(e, e))
        self.name = errno.errorcode.get(e, str(e))
        self.hdr = hdr


def raw_ioctl(fd, cmd, buf):
    """ioctl(fd, cmd, buf) through libc (the buffer is updated in place, also on failure)."""
    r = libc.ioctl(fd, cmd, ctypes.addressof(buf))
    if r < 0:
        raise Err(ctypes.get_errno())


def addr4(ip, port=0):
    return struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + bytes(ip) + bytes(20)


def addr6(ip, port=0):
    return struct.pack("=H", socket.AF_INET6) + struct.pack(">H", port) + bytes(4) + bytes(ip) + bytes(4)


NONE = bytes(28)


def op(kind, table, key, value=NONE, tag=0, flags=0):
    return struct.pack(OP_FMT, kind, table, flags, tag, key, value)


def listener(i, tag=0, kind=INSERT):
    return op(kind, LISTENERS, addr4([10, 32, i >> 8 & 255, i & 255], 80), addr4([192, 168, 77, 2], 40000 + i % 20000), tag)


def lease(i, owner=1, kind=INSERT):
    value = addr4([10, 32, 0, owner]) if kind == INSERT else NONE
    return op(kind, LEASES, addr4([192, 168, 77, 1], 20000 + i), value)


def identity(tag, i, kind=INSERT):
    return op(kind, IDENTITIES, addr4([10, 32, 1, i]), NONE, tag)


def policy(tag, net, mask, lo=0, hi=65535, kind=INSERT):
    """A policy row: container `tag` may reach IPv4 prefix net/mask on ports lo..hi."""
    return op(kind, POLICY, addr4(net, lo), addr4(mask, hi), tag)


def update(fd, ops, flags=0, count=None, ptr=None, hdr_extra=(0, 0, 0)):
    """TABLE_UPDATE; returns the new generation or raises Err (with the header read back)."""
    data = b"".join(ops)
    opsbuf = ctypes.create_string_buffer(data or b"\0")
    n = len(ops) if count is None else count
    addr = ctypes.addressof(opsbuf) if ptr is None else ptr
    gen_in, idx_in, reserved = hdr_extra
    hdr = ctypes.create_string_buffer(struct.pack(UPD_FMT, flags, n, addr, gen_in, idx_in, reserved), 32)
    try:
        raw_ioctl(fd, IOC_UPDATE, hdr)
    except Err as e:
        e.hdr = struct.unpack(UPD_FMT, hdr.raw)
        raise
    return struct.unpack(UPD_FMT, hdr.raw)[3]


def dump_page(fd, table, start, capacity, rows_ptr=None, extra=(0, 0)):
    buf = ctypes.create_string_buffer(capacity * 72 or 1)
    addr = ctypes.addressof(buf) if rows_ptr is None else rows_ptr
    reserved0, flags = extra
    hdr = ctypes.create_string_buffer(struct.pack(DUMP_FMT, table, reserved0, flags, start, capacity, addr, 0, 0, 0), 40)
    raw_ioctl(fd, IOC_DUMP, hdr)
    _, _, _, _, _, _, count, total, gen = struct.unpack(DUMP_FMT, hdr.raw)
    rows = [buf.raw[i * 72:(i + 1) * 72] for i in range(count)]
    return rows, total, gen


def dump(fd, table, page=64):
    """All rows of one table from one snapshot (restarts when the pages' generations differ)."""
    for _ in range(1000):
        rows, total, gen = dump_page(fd, table, 0, page)
        consistent = True
        while len(rows) < total:
            more, total2, gen2 = dump_page(fd, table, len(rows), page)
            if gen2 != gen or total2 != total or not more:
                consistent = False
                break
            rows += more
        if consistent:
            return rows, gen
    raise RuntimeError("no consistent dump in 1000 tries")


def tstats(fd):
    buf = ctypes.create_string_buffer(152)
    raw_ioctl(fd, IOC_TSTATS, buf)
    v = struct.unpack(STATS_FMT, buf.raw)
    return {"rows": list(v[1:5]), "limit": v[5], "generation": v[6], "ops": v[7], "refused": v[8],
            "enospc": v[9], "sets": v[10], "all_rows": list(v[12:16]), "translated": v[16], "not_found": v[17],
            "policy_denied": v[18]}


def as_insert(row):
    return struct.pack("=H", INSERT) + row[2:]


def errname(fn):
    try:
        fn()
        return None
    except Err as e:
        return e.name
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def child(fd):
    """Runs without CAP_NET_ADMIN, on a descriptor opened by root."""
    out = []
    for name, fn in (("update", lambda: update(fd, [listener(1)])),
                     ("dump", lambda: dump_page(fd, LISTENERS, 0, 4)),
                     ("stats", lambda: tstats(fd))):
        out.append(f"{name}={errname(fn)}")
    print(" ".join(out))
    return 0


def limit_tests(limit):
    fd = os.open("/dev/slim", os.O_RDWR)
    s0 = tstats(fd)
    check(f"STATS reports the module parameter table_limit={limit}", s0["limit"] == limit, s0)
    full = [listener(i) for i in range(limit)]
    e = errname(lambda: update(fd, full))
    check(f"a table can hold exactly table_limit={limit} rows", e is None and tstats(fd)["rows"][0] == limit, e or tstats(fd))
    before, gen = dump(fd, LISTENERS)
    e = errname(lambda: update(fd, [lease(1), listener(limit + 5)]))
    after, gen2 = dump(fd, LISTENERS)
    s = tstats(fd)
    check("one row over the limit -> ENOSPC, nothing applied (not even the other table's op)",
          e == "ENOSPC" and after == before and gen2 == gen and s["rows"][1] == 0, f"{e}, gen {gen}->{gen2}, {s['rows']}")
    check("ENOSPC counted (enospc and refused_batches)", s["enospc"] == 1 and s["refused"] == 1, s)
    e = errname(lambda: update(fd, [listener(0, kind=REMOVE), listener(limit + 5)]))
    check("a batch that removes one and adds one stays within the limit", e is None and tstats(fd)["rows"][0] == limit, e or "")
    other = [lease(i) for i in range(limit)]
    e = errname(lambda: update(fd, other))
    check("the limit is per table: a full lease table beside a full listener table", e is None, e or tstats(fd)["rows"])
    e = errname(lambda: update(fd, [identity(1, i) for i in range(limit + 1)]))
    check("a single batch over the limit -> ENOSPC", e == "ENOSPC" and tstats(fd)["enospc"] == 2, f"{e}, {tstats(fd)}")
    e = errname(lambda: update(fd, [], flags=RESET))
    s = tstats(fd)
    check("RESET empties the set again", e is None and s["rows"] == [0, 0, 0, 0], e or s)
    os.close(fd)
    return 1 if failures else 0


def main():
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--child":
        return child(int(args[1]))
    if len(args) == 2 and args[0] == "--limit":
        return limit_tests(int(args[1]))

    dev = os.open("/dev/slim", os.O_RDWR)
    ver = ctypes.create_string_buffer(16)
    raw_ioctl(dev, IOC_VERSION, ver)
    kv, feat, _, _ = struct.unpack("=IIII", ver.raw)
    check(f"VERSION announces SLIM_FEAT_TABLES (KABI_VERSION {KABI_VERSION}, as uapi/src/kabi.rs says)", feat & FEAT_TABLES and kv == KABI_VERSION, f"version {kv} features {feat:#x}")

    s = tstats(dev)
    check("a new file has an empty table set", s["rows"] == [0, 0, 0, 0] and s["generation"] == 0, s)
    check("default table_limit is 65536", s["limit"] == 65536, s["limit"])
    sets0 = s["sets"]

    # --- insert / dump / remove round trip
    ls = [listener(i, tag=7) for i in (3, 1, 2)]
    ds = [lease(5), lease(4, owner=2)]
    ids = [identity(9, 1), identity(8, 2), identity(9, 0)]
    try:
        gen = update(dev, ls + ds + ids)
        e = None
    except Err as x:
        gen, e = None, x.name
    check("TABLE_UPDATE inserts into all three tables in one batch", e is None and gen == 1, e or f"generation {gen}")
    for table, name, rows in ((LISTENERS, "listeners", ls), (LEASES, "leases", ds), (IDENTITIES, "identities", ids)):
        got, g = dump(dev, table, page=2)
        want = sorted(rows, key=lambda r: (r[8:16], r[16:]) if table == IDENTITIES else r[16:])
        if table == IDENTITIES:
            want = sorted(rows, key=lambda r: (struct.unpack("=Q", r[8:16])[0], r[16:44]))
        check(f"DUMP {name}: the rows, in key order, paged (2 per page)", got == want and g == 1,
              f"{len(got)} rows, generation {g}" if got == want else f"got {[r.hex() for r in got]}")
    s = tstats(dev)
    check("STATS: table sizes 3/2/3, generation 1, 8 ops applied", s["rows"] == [3, 2, 3, 0] and s["generation"] == 1 and s["ops"] == 8, s)
    check("STATS: the module-wide totals include this set", all(a >= b for a, b in zip(s["all_rows"], s["rows"])), s["all_rows"])
    e = errname(lambda: update(dev, [listener(1, tag=7, kind=REMOVE), lease(5, kind=REMOVE), identity(8, 2, kind=REMOVE)]))
    s = tstats(dev)
    check("REMOVE by key (listener: overlay+host; lease: host endpoint; identity: tag+address)", e is None and s["rows"] == [2, 1, 2, 0], e or s)
    got, _ = dump(dev, LEASES)
    check("the remaining lease is the other one", got == [lease(4, owner=2)], [r.hex() for r in got])
    e = errname(lambda: update(dev, [lease(4, kind=REMOVE), lease(4, owner=3)]))
    got, _ = dump(dev, LEASES)
    check("a lease changes owner atomically (remove + insert in one batch)", e is None and got == [lease(4, owner=3)], e or [r.hex() for r in got])

    # --- the policy table (issue 15, point 4): prefixes with port ranges, by tag
    pol = [policy(9, [10, 32, 0, 2], [255, 255, 255, 255], 8080, 8080), policy(9, [10, 32, 1, 0], [255, 255, 255, 0]),
           policy(8, [0, 0, 0, 0], [0, 0, 0, 0])]
    e = errname(lambda: update(dev, pol))
    got, _ = dump(dev, POLICY)
    want = sorted(pol, key=lambda r: (struct.unpack("=Q", r[8:16])[0], r[16:44], r[44:72]))
    check("policy rows: inserted, dumped by tag then prefix", e is None and got == want and tstats(dev)["rows"][3] == 3,
          e or [r.hex() for r in got])
    for name, row in (("host bits set", policy(9, [10, 32, 1, 7], [255, 255, 255, 0])),
                      ("a mask that is not ones then zeros", policy(9, [10, 0, 0, 0], [255, 0, 255, 0])),
                      ("ports the wrong way round", policy(9, [10, 32, 0, 0], [255, 255, 0, 0], 90, 80)),
                      ("a mask of another family", op(INSERT, POLICY, addr4([10, 0, 0, 0]), addr6([255] * 2 + [0] * 14), 9))):
        e = errname(lambda: update(dev, [row]))
        check(f"a policy row with {name} is refused with EINVAL", e == "EINVAL", e)
    e = errname(lambda: update(dev, [policy(9, [10, 32, 1, 0], [255, 255, 255, 0], kind=REMOVE), policy(8, [0, 0, 0, 0], [0, 0, 0, 0], kind=REMOVE),
                                     policy(9, [10, 32, 0, 2], [255, 255, 255, 255], 8080, 8080, kind=REMOVE)]))
    check("policy rows are removed by (tag, prefix, ports)", e is None and tstats(dev)["rows"][3] == 0, e or tstats(dev))

    # --- all or nothing
    for name, batch, want in (
        ("a bad op last", [listener(50), listener(51), op(INSERT, 9, addr4([10, 32, 0, 1], 1))], "EINVAL"),
        ("a duplicate insert", [listener(52), listener(3, tag=7)], "EEXIST"),
        ("a duplicate inside the batch", [listener(53), listener(53)], "EEXIST"),
        ("a remove of a missing key", [identity(9, 1, kind=REMOVE), lease(99, kind=REMOVE)], "ENOENT"),
    ):
        before = [dump(dev, t)[0] for t in (LISTENERS, LEASES, IDENTITIES)]
        s0 = tstats(dev)
        hdr = None
        try:
            update(dev, batch)
            e = None
        except Err as x:
            e, hdr = x.name, x.hdr
        after = [dump(dev, t)[0] for t in (LISTENERS, LEASES, IDENTITIES)]
        s1 = tstats(dev)
        idx = hdr[4] if hdr else None
        check(f"all-or-nothing, {name}: {want}, no table changed, generation kept, error_index {idx}",
              e == want and after == before and s1["generation"] == s0["generation"] and idx == len(batch) - 1,
              f"{e}, generation {s0['generation']}->{s1['generation']}, error_index {idx}")

    # --- malformed input
    refused0 = tstats(dev)["refused"]
    mal = [
        ("bad family (AF_UNIX)", lambda: update(dev, [op(INSERT, LISTENERS, struct.pack("=H", 1) + bytes(26), addr4([1, 1, 1, 1], 1))]), "EINVAL"),
        ("junk after an IPv4 address", lambda: update(dev, [op(INSERT, LEASES, addr4([1, 1, 1, 1], 1)[:20] + b"\x01" + bytes(7), addr4([10, 32, 0, 1]))]), "EINVAL"),
        ("IPv4-mapped IPv6 (not canonical)", lambda: update(dev, [op(INSERT, IDENTITIES, addr6(bytes(10) + b"\xff\xff" + bytes([10, 32, 0, 1])), NONE, 1)]), "EINVAL"),
        ("endpoint without a port", lambda: update(dev, [op(INSERT, LISTENERS, addr4([10, 32, 0, 1]), addr4([1, 1, 1, 1], 1))]), "EINVAL"),
        ("lease owner with a port", lambda: update(dev, [op(INSERT, LEASES, addr4([1, 1, 1, 1], 1), addr4([10, 32, 0, 1], 5))]), "EINVAL"),
        ("unknown op 3", lambda: update(dev, [op(3, LISTENERS, addr4([10, 32, 0, 1], 1), addr4([1, 1, 1, 1], 1))]), "EINVAL"),
        ("unknown table 0", lambda: update(dev, [op(INSERT, 0, addr4([10, 32, 0, 1], 1), addr4([1, 1, 1, 1], 1))]), "EINVAL"),
        ("non-zero op flags", lambda: update(dev, [op(INSERT, LISTENERS, addr4([10, 32, 0, 1], 1), addr4([1, 1, 1, 1], 1), flags=1)]), "EINVAL"),
        ("unknown update flag", lambda: update(dev, [], flags=2), "EINVAL"),
        ("non-zero reserved header field", lambda: update(dev, [], hdr_extra=(0, 0, 1)), "EINVAL"),
        ("out field set on input (generation)", lambda: update(dev, [], hdr_extra=(5, 0, 0)), "EINVAL"),
        ("count 1025 (over SLIM_TABLE_BATCH_MAX)", lambda: update(dev, [], count=BATCH_MAX + 1), "E2BIG"),
        ("count 4294967295", lambda: update(dev, [], count=0xFFFFFFFF), "E2BIG"),
    ]
    for name, fn, want in mal:
        e = errname(fn)
        check(f"malformed: {name} -> {want}", e == want, e)
    refused1 = tstats(dev)["refused"]
    check("every malformed batch counted in refused_batches (plus the 4 all-or-nothing ones before)", refused1 - refused0 == len(mal), f"{refused0} -> {refused1}")
    e = errname(lambda: update(dev, [listener(1)], ptr=8))
    check("ops pointer to unmapped memory -> EFAULT", e == "EFAULT", e)
    e = errname(lambda: update(dev, [listener(1)] * 2, count=2, ptr=0))
    check("NULL ops pointer -> EFAULT", e == "EFAULT", e)
    for name, fn in (("capacity 0", lambda: dump_page(dev, LISTENERS, 0, 0)),
                     ("capacity 1025", lambda: dump_page(dev, LISTENERS, 0, 1025)),
                     ("unknown table 5", lambda: dump_page(dev, 5, 0, 4)),
                     ("non-zero reserved", lambda: dump_page(dev, LISTENERS, 0, 4, extra=(1, 0))),
                     ("unknown flag", lambda: dump_page(dev, LISTENERS, 0, 4, extra=(0, 1)))):
        e = errname(fn)
        check(f"DUMP malformed: {name} -> EINVAL", e == "EINVAL", e)
    e = errname(lambda: dump_page(dev, LISTENERS, 0, 4, rows_ptr=8))
    check("DUMP to unmapped memory -> EFAULT", e == "EFAULT", e)
    rows, total, _ = dump_page(dev, LISTENERS, 1000, 4)
    check("DUMP past the end: 0 rows, the total", rows == [] and total == 2, f"{len(rows)} rows, total {total}")

    # --- a full batch
    big = [identity(100 + i // 200, i % 200) for i in range(BATCH_MAX)]
    t0 = time.monotonic()
    e = errname(lambda: update(dev, big))
    got, _ = dump(dev, IDENTITIES, page=BATCH_MAX)
    check(f"a batch of {BATCH_MAX} ops ({time.monotonic() - t0:.2f} s), all dumped back", e is None and len(got) == BATCH_MAX + 2, e or len(got))

    # --- callers without CAP_NET_ADMIN (descriptor opened by root, passed on)
    me = os.path.abspath(__file__)
    for who, cmd in (("root without CAP_NET_ADMIN", ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"]),
                     ("nobody", ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])):
        r = subprocess.run(cmd + [sys.executable, me, "--child", str(dev)], pass_fds=(dev,), capture_output=True, text=True, timeout=60)
        out = (r.stdout + r.stderr).strip()
        check(f"{who}: TABLE_UPDATE, DUMP, STATS refused with EPERM", out == "update=EPERM dump=EPERM stats=EPERM", out)
    check("the refused caller changed nothing", tstats(dev)["rows"][0] == 2, tstats(dev))

    # --- two openers: separate sets
    a = os.open("/dev/slim", os.O_RDWR)
    b = os.open("/dev/slim", os.O_RDWR)
    check("each open file gets its own set (sets_live +2)", tstats(a)["sets"] == sets0 + 2, f"{sets0} -> {tstats(a)['sets']}")
    update(a, [listener(1), lease(1), identity(1, 1)])
    update(b, [listener(1), listener(2)])
    check("a second opener does not see the first's rows", dump(b, LEASES)[0] == [] and len(dump(b, LISTENERS)[0]) == 2, tstats(b))
    e = errname(lambda: update(b, [listener(9)], flags=RESET))
    sa, sb = tstats(a), tstats(b)
    check("RESET by one opener leaves the other's rows", e is None and sa["rows"] == [1, 1, 1, 0] and sb["rows"] == [1, 0, 0, 0], f"{e}, a {sa['rows']}, b {sb['rows']}")
    check("RESET by one opener leaves the first file's set too", tstats(dev)["rows"][0] == 2, tstats(dev)["rows"])
    os.close(b)
    check("closing a file frees its set (sets_live -1)", tstats(a)["sets"] == sets0 + 1, tstats(a)["sets"])
    # A socket restricted through a file keeps that file's set alive after the file is closed.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    cli = socket.create_connection(lst.getsockname())
    req = struct.pack("=iIQ", cli.fileno(), 0, 5) + addr4([10, 32, 0, 9], 40000) + addr4([10, 32, 0, 1], 80)
    e = errname(lambda: raw_ioctl(a, IOC_RESTRICT, ctypes.create_string_buffer(req, 72)))
    os.close(a)
    s = tstats(dev)
    check("a closed file's set lives on while a socket restricted through it does", e is None and s["sets"] == sets0 + 1 and s["all_rows"][1] >= 1, f"{e}, {s}")
    cli.close()
    lst.close()
    s = tstats(dev)
    check("... and is freed with that socket (sets_live and all_rows back)", s["sets"] == sets0, s)

    # --- concurrent updates vs dumps: every dump is one whole batch
    n_rows = 150
    c = os.open("/dev/slim", os.O_RDWR)
    stop = time.monotonic() + 4
    bad, counts = [], {"updates": 0, "dumps": 0, "errors": []}

    def writer():
        k = 1
        while time.monotonic() < stop:
            try:
                # Each batch replaces everything with n_rows identities, all of tag k.
                update(c, [identity(k, i) for i in range(n_rows)], flags=RESET)
                counts["updates"] += 1
            except Err as x:
                counts["errors"].append(x.name)
            k += 1

    def reader():
        while time.monotonic() < stop:
            try:
                rows, _ = dump(c, IDENTITIES, page=32)
            except (Err, RuntimeError) as x:
                counts["errors"].append(str(x))
                continue
            tags = {struct.unpack("=Q", r[8:16])[0] for r in rows}
            if rows and (len(rows) != n_rows or len(tags) != 1):
                bad.append((len(rows), sorted(tags)[:5]))
            counts["dumps"] += 1
            tstats(c)

    def churn():
        while time.monotonic() < stop:
            x = os.open("/dev/slim", os.O_RDWR)
            update(x, [listener(1), lease(2)])
            os.close(x)

    threads = [threading.Thread(target=f) for f in (writer, writer, reader, reader, churn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(f"concurrent RESET+{n_rows}-row batches vs paged dumps: every dump one whole batch "
          f"({counts['updates']} updates, {counts['dumps']} dumps)",
          not bad and not counts["errors"] and counts["updates"] > 0 and counts["dumps"] > 0,
          f"inconsistent: {bad[:3]}, errors {counts['errors'][:3]}")
    os.close(c)
    update(dev, [], flags=RESET)
    os.close(dev)
    r = os.open("/dev/slim", os.O_RDWR)
    s = tstats(r)
    check("every set freed again (sets_live 1, all_rows 0)", s["sets"] == 1 and s["all_rows"] == [0, 0, 0, 0], s)
    os.close(r)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
