#!/usr/bin/env python3
"""Checks that bench/run.py wrote its plots: check_plots.py DIR NAME.png [NAME.png ...].

Each file must exist in DIR, be a whole PNG (the signature, an IHDR chunk first with a valid CRC
and plausible dimensions, an IEND chunk last) and be larger than a blank canvas or bare axes.
What is drawn is not judged (bench/plots.py refuses to draw a chart without data). Prints one
line per file and exits 1 if any fails. Only the standard library: it checks the files
independently of matplotlib, which wrote them."""

import os
import struct
import sys
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# bench/plots.py's charts are 40-70 KB; at 800x450 a blank canvas is 2.5 KB, bare axes 8 KB.
MIN_BYTES = 10000
MIN_SIDE, MAX_SIDE = 200, 5000  # Pixels: bench/plots.py draws about 800x450.


def check(path):
    """None if `path` is a plausible plot, else what is wrong with it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot read: {e.strerror}"
    if not data.startswith(SIGNATURE):
        return "not a PNG (no signature)"
    if len(data) < MIN_BYTES:
        return f"{len(data)} bytes, fewer than {MIN_BYTES}: nothing drawn?"
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        return "no IHDR chunk first"
    header = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) != crc:
        return "IHDR chunk corrupt (CRC)"
    width, height = struct.unpack(">II", header[:8])
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        return f"implausible size {width}x{height}"
    if not data.endswith(IEND):
        return "truncated (no IEND chunk at the end)"
    return None


def main():
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} DIR NAME.png [NAME.png ...]")
    directory, names = sys.argv[1], sys.argv[2:]
    failed = 0
    for name in names:
        path = os.path.join(directory, name)
        problem = check(path)
        if problem:
            failed += 1
            print(f"check_plots: {path}: {problem}")
        else:
            print(f"check_plots: {path}: ok ({os.path.getsize(path):,} bytes)")
    if failed:
        sys.exit(f"check_plots: {failed} of {len(names)} plots missing or broken")


if __name__ == "__main__":
    main()
