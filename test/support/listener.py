"""Test listener: accepts TCP and UDP on the given ports and tells each client where it landed.

Usage: listener.py NAME PORT[/udp] ...   (runs inside a test network namespace)

Every TCP connection and every UDP datagram is answered with one JSON line:
  {"listener": NAME, "port": <port that accepted>, "proto": "tcp", "orig": "<original destination>",
   "local": "<address the socket is bound to locally>"}
"orig" is read from the kernel (SO_ORIGINAL_DST for REDIRECT; for TPROXY and plain delivery the local address
is already the original destination). Prints "ready" on stdout once every socket listens.
With LISTENER_MARK set (e.g. 0x539) every socket carries that packet mark (SO_MARK), as ztunnel's own do.
Node cannot call getsockopt(SO_ORIGINAL_DST), which is why this helper is Python.
"""
import json
import os
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
SO_MARK = 36
IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74


def original_dst(conn, family):
    try:
        if family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            return "%s:%d" % (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
    except OSError:
        name = conn.getsockname()
        return ("%s:%d" if family == socket.AF_INET else "[%s]:%d") % (name[0], name[1])


def fmt(addr, family):
    return ("%s:%d" if family == socket.AF_INET else "[%s]:%d") % (addr[0], addr[1])


def parse_orig_cmsg(ancdata, family):
    for level, ctype, data in ancdata:
        if family == socket.AF_INET and ctype == IP_RECVORIGDSTADDR:
            port = struct.unpack_from("!H", data, 2)[0]
            return "%s:%d" % (socket.inet_ntop(socket.AF_INET, data[4:8]), port)
        if family == socket.AF_INET6 and ctype == IPV6_RECVORIGDSTADDR:
            port = struct.unpack_from("!H", data, 2)[0]
            return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, data[8:24]), port)
    return None


def main():
    name = sys.argv[1]
    mark = int(os.environ.get("LISTENER_MARK", "0"), 0)
    sel = selectors.DefaultSelector()
    for spec in sys.argv[2:]:
        port_text, _, proto = spec.partition("/")
        port = int(port_text)
        proto = proto or "tcp"
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(family, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if mark:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            # Transparent sockets accept TPROXY-diverted traffic for any destination address. Only root may
            # set it; a listener run as the proxy uid (the DNS agent) does not need it.
            try:
                s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            except PermissionError:
                pass
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if proto == "udp":
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
            elif proto == "udp":
                s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            s.bind((host, port))
            if proto == "tcp":
                s.listen(64)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, (port, proto, family))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            port, proto, family = key.data
            sock = key.fileobj
            try:
                if proto == "tcp":
                    conn, peer = sock.accept()
                    conn.setblocking(True)
                    conn.settimeout(2)
                    report = {"listener": name, "port": port, "proto": "tcp",
                              "orig": original_dst(conn, family), "local": fmt(conn.getsockname(), family),
                              "peer": fmt(peer, family)}
                    conn.sendall((json.dumps(report) + "\n").encode())
                    conn.close()
                else:
                    data, ancdata, _, peer = sock.recvmsg(2048, 256)
                    orig = parse_orig_cmsg(ancdata, family)
                    report = {"listener": name, "port": port, "proto": "udp", "orig": orig,
                              "peer": fmt(peer, family)}
                    sock.sendto((json.dumps(report) + "\n").encode(), peer)
                print(json.dumps(report), flush=True)
            except OSError as err:
                print(json.dumps({"error": str(err)}), flush=True)


if __name__ == "__main__":
    main()
