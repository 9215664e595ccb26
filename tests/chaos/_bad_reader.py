"""A client that sends requests and never reads a reply (T3).

    python _bad_reader.py URL BURST RATE

Sends BURST identity requests of 64 KiB at once, prints "burst <n>", then RATE more
per second until killed. Its replies pile up in the server's and its own buffers.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import zmq

from tensorwire.codec import encode


def main() -> int:
    url, burst, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 100)
    sock.connect(url)
    x = np.ones(16 << 10, np.float32)
    rid, dropped = 0, 0

    def send() -> None:
        nonlocal rid, dropped
        rid += 1
        try:
            sock.send_multipart(encode({"k": "call", "id": rid, "op": "identity"},
                                       {"a": [x], "kw": {}}), copy=False)
        except zmq.Again:
            dropped += 1

    for _ in range(burst):
        send()
    print(f"burst {rid - dropped}", flush=True)
    while True:
        send()
        time.sleep(1.0 / rate)


if __name__ == "__main__":
    sys.exit(main())
