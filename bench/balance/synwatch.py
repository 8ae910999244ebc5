#!/usr/bin/env python3
"""synwatch.py PORT OUT — writes the wall-clock time of every TCP connection
attempt (a SYN without ACK) to 127.0.0.1:PORT seen on the loopback
interface, one per line, to OUT, until SIGTERM.

Used by bench/balance/run to tell how soon each proxy stops sending to an
origin whose process was killed: a dead port answers every SYN with a reset,
so the SYNs are exactly the proxy's attempts (client requests, retries and
health checks alike). Needs CAP_NET_RAW (a packet socket on `lo`); prints one
line and exits 3 without it, so the caller can say "not measured".
"""

import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 3
PACKET_OUTGOING = 4  # each loopback packet is seen twice: sent, then received


def main() -> int:
    port, out_path = int(sys.argv[1]), sys.argv[2]
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        s.bind(("lo", 0))
    except OSError as e:
        print(f"synwatch: no packet socket on lo ({e})", file=sys.stderr)
        return 3
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    s.settimeout(0.2)
    with open(out_path, "w", buffering=1) as out:
        print("ready", file=sys.stderr, flush=True)
        while not stop:
            try:
                pkt, addr = s.recvfrom(256)
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            now = time.time()
            if addr[2] != PACKET_OUTGOING or len(pkt) < 14 + 20 + 14:
                continue
            if struct.unpack_from("!H", pkt, 12)[0] != 0x0800:
                continue
            ihl = (pkt[14] & 0x0F) * 4
            if pkt[14 + 9] != 6 or len(pkt) < 14 + ihl + 14:
                continue
            tcp = 14 + ihl
            dport = struct.unpack_from("!H", pkt, tcp + 2)[0]
            flags = pkt[tcp + 13]
            if dport == port and flags & 0x02 and not flags & 0x10:
                out.write(f"{now:.6f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
