#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ from the shared test vectors.

Usage: python3 fuzz/seed_corpus.py [path/to/vectors.json]
(default: tests/fixtures/vectors/vectors.json, relative to the repository)

Input format (see fuzz/src/lib.rs): one mode byte (bit 0 = assist), then the
target's header values each followed by 0xFF, then the body. Each vector is
written verbatim (mode 0); vectors a target can re-sign also get an assisted
copy (mode 1), named `<vector>.assist`.
"""

import base64
import json
import os
import sys
import urllib.parse

SEP = b"\xff"
HERE = os.path.dirname(os.path.abspath(__file__))

# target -> (providers whose vectors seed it, header slots in order)
TARGETS = {
    "cbb": (["cbb"], []),
    "shouqianba_md5": (["shouqianba"], ["authorization"]),
    "shouqianba_rsa": (["shouqianba"], ["authorization"]),
    "abc": (["abc"], []),
    "dingdang_hmac": (["dingdang"], ["authorization"]),
    "dingdang_rsa": (["dingdang"], ["authorization"]),
    "dryad": (["dryad"], ["x-signature", "x-nonce", "x-timestamp"]),
}


def header(vector, name):
    for k, v in vector["request"]["headers"].items():
        if k.lower() == name:
            return v.encode()
    return None


def encode(mode, slots, body):
    """mode byte, then each header value + 0xFF, then the body.

    An absent header (None) is expressed by running out of separators, which
    works for trailing slots: UTF-8 bodies never contain 0xFF. An absent
    header followed by a present one is written as an empty value instead.
    """
    while slots and slots[-1] is None:
        slots = slots[:-1]
    out = bytes([mode])
    for value in slots:
        out += (value if value is not None else b"") + SEP
    return out + body


def assisted(target, vector, body):
    """The assisted-mode input for this vector, or None."""
    if target == "shouqianba_md5":
        auth = header(vector, "authorization")
        if auth and b" " in auth:
            return encode(1, [auth.split(b" ", 1)[0]], body)
    if target == "dingdang_hmac":
        auth = header(vector, "authorization")
        if auth and auth.startswith(b"TSK-HMAC-SHA256-BASIC"):
            for part in auth.split(b" ", 1)[1].split(b","):
                key, _, value = part.strip().partition(b"=")
                if key.lower() == b"datetime":
                    return encode(1, [value], body)
    if target == "dryad":
        slots = [header(vector, n) for n in TARGETS["dryad"][1]]
        return encode(1, slots, body)
    if target == "abc":
        msg = urllib.parse.parse_qs(body.decode(), keep_blank_values=True).get("MSG")
        if msg:
            text = msg[0].replace(" ", "+")
            try:
                doc = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except ValueError:
                return None
            return bytes([1]) + doc
    return None


def main():
    default = os.path.join(HERE, "..", "tests", "fixtures", "vectors", "vectors.json")
    path = sys.argv[1] if len(sys.argv) > 1 else default
    with open(path, encoding="utf-8") as f:
        vectors = json.load(f)
    for target, (providers, names) in TARGETS.items():
        out_dir = os.path.join(HERE, "corpus", target)
        os.makedirs(out_dir, exist_ok=True)
        count = 0
        for v in vectors:
            if v["provider"] not in providers:
                continue
            body = v["request"]["body"].encode("utf-8")
            slots = [header(v, n) for n in names]
            files = {v["name"]: encode(0, slots, body)}
            extra = assisted(target, v, body)
            if extra is not None:
                files[v["name"] + ".assist"] = extra
            for name, data in files.items():
                with open(os.path.join(out_dir, name), "wb") as f:
                    f.write(data)
                count += 1
        print(f"{target}: {count} seeds")


if __name__ == "__main__":
    main()
