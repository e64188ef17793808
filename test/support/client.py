"""Test client: one TCP connection (or one UDP datagram) and the listener's JSON answer on stdout.

Usage: client.py HOST PORT [tcp|udp] [TIMEOUT_SECONDS]
Prints the listener's report, or {"error": "..."} when nothing answered (refused, timed out, unreachable).
CLIENT_MARK (e.g. 0x539) sets the socket's packet mark (SO_MARK); CLIENT_SOURCE binds a source address first.
"""
import json
import os
import socket
import sys


def prepared(s, mark, source, timeout):
    """The socket with its packet mark (SO_MARK) and source address, when asked for."""
    if mark:
        s.setsockopt(socket.SOL_SOCKET, 36, mark)
    if source:
        s.bind((source, 0))
    s.settimeout(timeout)
    return s


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    proto = sys.argv[3] if len(sys.argv) > 3 else "tcp"
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    mark = int(os.environ.get("CLIENT_MARK", "0"), 0)
    source = os.environ.get("CLIENT_SOURCE")
    try:
        if proto == "tcp":
            s = prepared(socket.socket(family, socket.SOCK_STREAM), mark, source, timeout)
            s.connect((host, port))
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
        else:
            s = prepared(socket.socket(family, socket.SOCK_DGRAM), mark, source, timeout)
            s.sendto(b"query", (host, port))
            data, _ = s.recvfrom(4096)
        if not data:
            print(json.dumps({"error": "connection closed without an answer"}))
        else:
            sys.stdout.write(data.decode())
    except OSError as err:
        print(json.dumps({"error": "%s: %s" % (type(err).__name__, err)}))


if __name__ == "__main__":
    main()
