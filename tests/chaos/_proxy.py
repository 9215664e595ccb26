"""A TCP fault proxy (T4): delays chunks and cuts connections at random.

    python _proxy.py TARGET_HOST TARGET_PORT SEED MEAN_LIFE_S MAX_DELAY_S

Listens on 127.0.0.1 (a free port, printed as "port N"), forwards each connection to
the target. Every chunk may be held back up to MAX_DELAY_S; every connection is cut
(both sides closed, whatever is in flight lost) after an exponentially distributed
lifetime with mean MEAN_LIFE_S. tc netem is not available on these machines.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time

CUTS = 0
LOCK = threading.Lock()


def pump(src: socket.socket, dst: socket.socket, rnd: random.Random, dies_at: float,
         max_delay: float, closed: threading.Event) -> None:
    global CUTS
    try:
        src.settimeout(0.05)
        while not closed.is_set():
            if time.monotonic() > dies_at:
                with LOCK:
                    CUTS += 1
                break
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            if rnd.random() < 0.2:
                time.sleep(rnd.uniform(0, max_delay))
            if time.monotonic() > dies_at and rnd.random() < 0.5:
                dst.sendall(data[: rnd.randrange(len(data) + 1)])  # cut mid-message
                with LOCK:
                    CUTS += 1
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        closed.set()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def main() -> int:
    host, port, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mean_life, max_delay = float(sys.argv[4]), float(sys.argv[5])
    rnd = random.Random(seed)
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"port {listener.getsockname()[1]}", flush=True)
    connections = 0
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection((host, port), timeout=5)
        except OSError:
            client.close()
            continue
        connections += 1
        upstream.settimeout(None)
        dies_at = time.monotonic() + rnd.expovariate(1.0 / mean_life)
        closed = threading.Event()
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, daemon=True,
                             args=(a, b, random.Random(rnd.random()), dies_at, max_delay,
                                   closed)).start()
        print(f"connections {connections} cuts {CUTS}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
