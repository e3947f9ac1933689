#!/usr/bin/env python3
"""Memory per idle keep-alive connection, for bench/load.sh.

Opens connections to a proxy in steps (e.g. 1000, then 10000 in all). Each
connection sends one HTTP/1.1 request, reads the whole response and then
stays open and idle, as a keep-alive client between requests does. After
each step it waits for the proxy to settle and prints one line:

    CONNS open=N rss_kb=KB gauge=G

where KB is the proxy's VmRSS and G the proxy's own count of downstream
connections (from its admin /metrics, -1 if unknown). The first line is the
idle proxy (open=0). Needs `ulimit -n` above the largest step.
"""

import argparse
import socket
import sys
import time
import urllib.request

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle-conns\r\n\r\n"


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def downstream_gauge(admin):
    if not admin:
        return -1
    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError:
        return -1
    total = 0
    seen = False
    for line in text.splitlines():
        if line.startswith("spindle_downstream_connections{"):
            total += int(float(line.rsplit(" ", 1)[1]))
            seen = True
    return total if seen else -1


def read_response(sock):
    """Reads one response with a Content-Length body; raises on anything else."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected status line {lines[0]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ConnectionError("response without content-length")
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed inside the response body")
        body += chunk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="proxy port on 127.0.0.1")
    parser.add_argument("--pid", type=int, required=True, help="proxy process id")
    parser.add_argument("--admin", default="", help="admin host:port for the gauge")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait per step")
    parser.add_argument("steps", type=int, nargs="+", help="total connections per step")
    args = parser.parse_args()

    time.sleep(args.settle)
    print(f"CONNS open=0 rss_kb={vm_rss_kb(args.pid)} gauge={downstream_gauge(args.admin)}",
          flush=True)
    conns = []
    for target in args.steps:
        while len(conns) < target:
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(REQUEST)
            read_response(sock)
            conns.append(sock)
        time.sleep(args.settle)
        gauge = downstream_gauge(args.admin)
        print(f"CONNS open={len(conns)} rss_kb={vm_rss_kb(args.pid)} gauge={gauge}", flush=True)
    # Every connection must still be open: a closed one reads as EOF at once.
    closed = 0
    for sock in conns:
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
    print(f"CLOSED count={closed}", flush=True)
    for sock in conns:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
