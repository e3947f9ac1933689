#!/usr/bin/env python3
"""Sends N GET / requests over a few HTTP/1.1 keep-alive connections, one at a time.

For bench/icount.sh: a fixed number of requests (wrk runs for a fixed time instead).
Usage: keepalive_get.py PORT N [CONNECTIONS]. Exits 1 when a response is not 200.
"""

import http.client
import sys


def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(conns)]
    bad = 0
    for i in range(count):
        c = clients[i % conns]
        c.request("GET", "/", headers={"User-Agent": "icount", "Accept": "*/*"})
        r = c.getresponse()
        r.read()
        bad += r.status != 200
    for c in clients:
        c.close()
    if bad:
        print(f"{bad} of {count} responses were not 200", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
