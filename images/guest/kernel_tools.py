#!/usr/bin/env python3
"""Build helpers for the Panal test guest, used by scripts/build-guest-image.sh.

  kernel_tools.py vmlinux BZIMAGE OUT      extract the uncompressed kernel (ELF, PVH entry)
  kernel_tools.py modules MODDIR NAME...   print the .ko paths (relative to MODDIR) needed for
                                           NAME..., dependencies first; built-in ones are skipped

The kernel package ships no modules.dep (depmod runs at install time), so dependencies are read
from each module's own .modinfo "depends=" string.
"""
import gzip
import lzma
import os
import struct
import subprocess
import sys

MAGICS = [
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b\x08", "gzip"),
]


def decompress(data: bytes, kind: str) -> bytes:
    if kind == "xz":
        # One stream; the kernel appends its uncompressed size after it, which we ignore.
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=__import__("io").BytesIO(data)).read()
    if kind == "zstd":
        p = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True)
        return p.stdout
    raise ValueError(kind)


def vmlinux(bzimage: str, out: str) -> None:
    img = open(bzimage, "rb").read()
    if img[0x202:0x206] != b"HdrS":
        sys.exit(f"{bzimage}: not a bzImage (no HdrS header)")
    setup_sects = img[0x1F1] or 4
    pm_start = (setup_sects + 1) * 512
    # Boot protocol >= 2.08 says exactly where the compressed payload is.
    payload_offset, payload_length = struct.unpack_from("<II", img, 0x248)
    candidates = []
    if payload_length:
        candidates.append(pm_start + payload_offset)
    # Fallback: scan for a compression magic, as the kernel's extract-vmlinux does.
    for magic, _ in MAGICS:
        pos = img.find(magic, pm_start)
        while pos != -1 and len(candidates) < 16:
            candidates.append(pos)
            pos = img.find(magic, pos + 1)
    for pos in candidates:
        for magic, kind in MAGICS:
            if img.startswith(magic, pos):
                try:
                    data = decompress(img[pos:], kind)
                except Exception:
                    continue
                if data[:4] == b"\x7fELF":
                    with open(out, "wb") as f:
                        f.write(data)
                    return
    sys.exit(f"{bzimage}: found no compressed ELF payload")


def modinfo_depends(path: str) -> list:
    data = open(path, "rb").read()
    i = data.find(b"\x00depends=")
    if i < 0:
        return []
    j = data.find(b"\x00", i + 1)
    deps = data[i + 9 : j].decode()
    return [d for d in deps.split(",") if d]


def modules(moddir: str, names: list) -> None:
    index = {}
    for root, _, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            if f.endswith(".ko"):
                rel = os.path.relpath(os.path.join(root, f), moddir)
                index[f[:-3].replace("-", "_")] = rel
    order, seen = [], set()

    def visit(name):
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        rel = index.get(key)
        if rel is None:
            return  # built in, or not in this kernel
        for dep in modinfo_depends(os.path.join(moddir, rel)):
            visit(dep)
        order.append(rel)

    for n in names:
        visit(n)
    print("\n".join(order))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "vmlinux":
        vmlinux(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "modules":
        modules(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
