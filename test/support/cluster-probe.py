"""
The cluster suite's witness of unredirected traffic: listens on ADDRESS:PORT inside the node's netns and
prints one JSON line per connection, {"name": <the first line the client sent>, "peer": <its IP>, "t": <unix
time>}. Meshed pods' app containers connect here in a loop from their first instant, sending their pod's
name: with their rules in place the connection is redirected to the pod's own port 15001 and never arrives,
so any line naming a meshed pod is a moment that pod ran without its rules.

usage: cluster-probe.py ADDRESS PORT
"""
import json
import socket
import sys
import time


def main():
    address, port = sys.argv[1], int(sys.argv[2])
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(128)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        conn, peer = server.accept()
        conn.settimeout(1)
        data = b""
        try:
            while b"\n" not in data and len(data) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        conn.close()
        name = data.split(b"\n")[0].decode(errors="replace").strip()
        print(json.dumps({"name": name, "peer": peer[0], "t": time.time()}), flush=True)


if __name__ == "__main__":
    main()
