"""JA4 (FoxIO, technical details v0.18.2) of each ClientHello file given, written apart
from the relay's own implementation, from the raw bytes: the reference tests/ja4.rs holds
src/ja4.rs to. Prints one line per file: `NAME JA4`.

Usage: ja4_reference.py FILE...
"""

import hashlib
import os
import struct
import sys


def grease(v):
    return v & 0x0F0F == 0x0A0A and v >> 8 == v & 0xFF


def handshake(records):
    """The handshake message carried by the records at the start of `records`."""
    out, i = b"", 0
    while i + 5 <= len(records) and records[i] == 22:
        (length,) = struct.unpack("!H", records[i + 3 : i + 5])
        out += records[i + 5 : i + 5 + length]
        i += 5 + length
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big"):
            break
    return out[4 : 4 + int.from_bytes(out[1:4], "big")]


def ja4(body):
    legacy = struct.unpack("!H", body[0:2])[0]
    i = 2 + 32
    i += 1 + body[i]
    (n,) = struct.unpack("!H", body[i : i + 2])
    ciphers = [struct.unpack("!H", body[i + 2 + k : i + 4 + k])[0] for k in range(0, n, 2)]
    i += 2 + n
    i += 1 + body[i]
    extensions, versions, alpn, sigs, sni = [], [], None, None, False
    if i < len(body):
        (total,) = struct.unpack("!H", body[i : i + 2])
        i += 2
        end = i + total
        while i < end:
            kind, length = struct.unpack("!HH", body[i : i + 4])
            data = body[i + 4 : i + 4 + length]
            i += 4 + length
            extensions.append(kind)
            if kind == 0:
                sni = True
            elif kind == 16 and len(data) > 3:
                alpn = data[3 : 3 + data[2]]
            elif kind == 43:
                versions = [struct.unpack("!H", data[1 + k : 3 + k])[0] for k in range(0, data[0], 2)]
            elif kind == 13:
                (m,) = struct.unpack("!H", data[0:2])
                sigs = [struct.unpack("!H", data[2 + k : 4 + k])[0] for k in range(0, m, 2)]
    versions = [v for v in versions if not grease(v)] or [legacy]
    names = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}
    version = names.get(max(versions), "00")
    ciphers = [c for c in ciphers if not grease(c)]
    extensions = [e for e in extensions if not grease(e)]
    if not alpn:
        ends = "00"
    elif chr(alpn[0]).isalnum() and chr(alpn[-1]).isalnum() and alpn[0] < 128 and alpn[-1] < 128:
        ends = chr(alpn[0]) + chr(alpn[-1])
    else:
        ends = alpn.hex()[0] + alpn.hex()[-1]
    a = "t%s%s%02d%02d%s" % (version, "d" if sni else "i", min(len(ciphers), 99), min(len(extensions), 99), ends)

    def truncated(text):
        return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"

    b = truncated(",".join("%04x" % c for c in sorted(ciphers)))
    rest = ",".join("%04x" % e for e in sorted(extensions) if e not in (0, 16))
    if sigs:
        rest += "_" + ",".join("%04x" % s for s in sigs)
    return "%s_%s_%s" % (a, b, truncated(rest))


for path in sys.argv[1:]:
    with open(path, "rb") as f:
        print(os.path.basename(path), ja4(handshake(f.read())))
