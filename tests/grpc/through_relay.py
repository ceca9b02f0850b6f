"""A real gRPC client (grpcio, its default c-ares resolver) calling NAME through snirelay,
inside a network and mount namespace the test made for it (see tests/grpc_client.rs):
this script's own /etc/hosts and /etc/resolv.conf, a DNS server on 127.0.0.1:53 that
records every query, a TLS gRPC upstream on 127.0.0.2:8443, and the relay on
127.0.0.1:443 pinning NAME to that upstream.

Usage: through_relay.py SNIRELAY WORKDIR HOSTS_FILE
Prints one JSON object: whether the call succeeded, its answer, and the DNS queries seen.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import threading

import grpc

NAME = "translation.googleapis.com"
METHOD = "/snirelay.test.Echo/Say"


def dns_server(seen):
    """Answers every query with NXDOMAIN and records `NAME TYPE`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    types = {1: "A", 28: "AAAA", 65: "HTTPS", 33: "SRV", 16: "TXT"}

    def serve():
        while True:
            data, peer = sock.recvfrom(4096)
            labels, i = [], 12
            while data[i] != 0:
                n = data[i]
                labels.append(data[i + 1 : i + 1 + n].decode())
                i += n + 1
            qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
            seen.append(f"{'.'.join(labels).lower()} {types.get(qtype, qtype)}")
            flags = 0x8183  # response, recursion desired and available, NXDOMAIN
            reply = data[:2] + struct.pack("!HHHHH", flags, 1, 0, 0, 0) + data[12 : i + 5]
            sock.sendto(reply, peer)

    threading.Thread(target=serve, daemon=True).start()


def upstream(workdir):
    """A TLS gRPC server answering METHOD with what it got, reversed."""
    with open(os.path.join(workdir, "key.pem"), "rb") as f:
        key = f.read()
    with open(os.path.join(workdir, "cert.pem"), "rb") as f:
        cert = f.read()
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    handler = grpc.method_handlers_generic_handler(
        "snirelay.test.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req[::-1])},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port("127.0.0.2:8443", grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    return server, cert


def main():
    snirelay, workdir, hosts = sys.argv[1:4]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)
    resolv = os.path.join(workdir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)

    seen = []
    dns_server(seen)
    server, cert = upstream(workdir)
    relay = subprocess.Popen(
        [snirelay, "run", "--config", os.path.join(workdir, "rules.json"),
         "--listen", "127.0.0.1:443",
         "--resolve", f"{NAME}=127.0.0.2:8443"],
        stderr=subprocess.PIPE, text=True,
    )
    for line in relay.stderr:
        if "listening addr=" in line:
            break
    threading.Thread(target=lambda: relay.stderr.read(), daemon=True).start()

    os.environ["GRPC_DNS_RESOLVER"] = "ares"
    result = {"ok": False}
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert)
        with grpc.secure_channel(f"{NAME}:443", credentials) as channel:
            say = channel.unary_unary(METHOD)
            result["answer"] = say(b"olleh", timeout=10).decode()
            result["ok"] = True
    except grpc.RpcError as e:
        result["error"] = f"{e.code()}: {e.details()}"
    result["queries"] = seen
    relay.terminate()
    relay.wait()
    server.stop(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
