#!/usr/bin/python3
"""Drives /dev/slim with raw ioctls for the VM tests (first milestone; a Rust client comes later).

    kabi_probe.py [--fd N] OP

OP: open | version | stats | unknown | badsize | nullptr | restrict-stub
Prints "ok ..." (exit 0) or "errno=ENAME" (exit 1). The ioctl numbers are computed here with the
kernel's _IOC formula from the struct sizes, and KABI_VERSION is read from uapi/src/kabi.rs, so this
script checks the module against the shared ABI file rather than against copied constants.
"""
import errno
import fcntl
import os
import re
import struct
import sys

KABI_RS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "uapi", "src", "kabi.rs")

IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2
MAGIC = ord("S")
SIZES = {"version": 16, "restrict": 72, "authorize": 40, "child": 64, "revoke": 16, "stats": 160}


def ioc(d, nr, size, ty=MAGIC):
    return (d << 30) | (size << 16) | (ty << 8) | nr


IOC_VERSION = ioc(IOC_READ, 0, SIZES["version"])
IOC_RESTRICT = ioc(IOC_WRITE, 1, SIZES["restrict"])
IOC_STATS = ioc(IOC_READ, 5, SIZES["stats"])


def kabi_version():
    with open(KABI_RS) as f:
        m = re.search(r"pub const KABI_VERSION: u32 = (\d+);", f.read())
    return int(m.group(1))


def main():
    args = sys.argv[1:]
    fd = None
    if len(args) >= 2 and args[0] == "--fd":
        fd = int(args[1])
        args = args[2:]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    op = args[0]
    try:
        if fd is None:
            fd = os.open("/dev/slim", os.O_RDWR)
        if op == "open":
            print("ok opened")
        elif op == "version":
            buf = bytearray(SIZES["version"])
            fcntl.ioctl(fd, IOC_VERSION, buf, True)
            ver, feat, r0, r1 = struct.unpack("=IIII", buf)
            want = kabi_version()
            status = "ok" if ver == want and r0 == 0 and r1 == 0 else "MISMATCH"
            print(f"{status} version={ver} expected={want} features={feat:#x}")
            return 0 if status == "ok" else 1
        elif op == "stats":
            buf = bytearray(SIZES["stats"])
            fcntl.ioctl(fd, IOC_STATS, buf, True)
            v = struct.unpack("=4Q16Q", buf)
            print(f"ok live={v[0]} restricted={v[1]} children={v[2]} revoked={v[3]} refusals={list(v[4:])}")
        elif op == "unknown":
            fcntl.ioctl(fd, ioc(IOC_NONE, 0x7F, 0), 0)
            print("ok (unexpected success)")
        elif op == "badsize":
            # VERSION's number with a different size field is a different (unknown) ioctl.
            fcntl.ioctl(fd, ioc(IOC_READ, 0, 8), bytearray(8), True)
            print("ok (unexpected success)")
        elif op == "nullptr":
            fcntl.ioctl(fd, IOC_VERSION, 0)
            print("ok (unexpected success)")
        elif op == "restrict-stub":
            fcntl.ioctl(fd, IOC_RESTRICT, bytes(SIZES["restrict"]))
            print("ok (restrict accepted)")
        else:
            print(f"unknown op {op}", file=sys.stderr)
            return 2
        return 0
    except OSError as e:
        print(f"errno={errno.errorcode.get(e.errno, e.errno)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
