#!/usr/bin/python3
"""Converts valgrind lackey output (--trace-mem=yes) into a vmxsim trace.

Reads lackey's lines ("I  0401ab70,3", " L 1fff000708,8", " S ...", " M ...")
from standard input and writes the binary format described in docs/trace.md.
Lines that are not memory records (lackey's banner and summary) are skipped.
"""
import argparse
import sys

KINDS = {"I": 0, "L": 1, "S": 2, "M": 3}
MAGIC = b"VMXTRACE"
VERSION = 1


def varint(value, out):
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def zigzag(delta):
    return (delta << 1) ^ (delta >> 63) if delta >= 0 else ((-delta) << 1) - 1


def convert(lines, limit):
    out = bytearray(MAGIC)
    out += VERSION.to_bytes(4, "little") + (0).to_bytes(4, "little")
    prev = [0, 0]  # instruction stream, data stream
    count = 0
    for line in lines:
        if len(line) < 4 or line.startswith("=="):
            continue
        kind = line[:2].strip()
        if kind not in KINDS:
            continue
        try:
            addr_text, size_text = line[3:].strip().split(",")
            addr, size = int(addr_text, 16), int(size_text)
        except ValueError:
            continue
        k = KINDS[kind]
        stream = 0 if k == 0 else 1
        size = max(1, min(size, 32))
        out.append(k | ((size - 1) << 3))
        varint(zigzag(addr - prev[stream]), out)
        prev[stream] = addr
        count += 1
        if limit and count >= limit:
            break
    return bytes(out), count


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", help="trace file to write")
    parser.add_argument("--limit", type=int, default=0, help="keep only the first N records (0: all)")
    args = parser.parse_args()
    data, count = convert(sys.stdin, args.limit)
    with open(args.output, "wb") as f:
        f.write(data)
    print(f"{args.output}: {count} records, {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
