"""What the client scripts here share: they run inside a network and mount namespace the
test made for them (`unshare --net --mount`), with their own /etc/hosts and resolv.conf,
a DNS server on 127.0.0.1:53 that answers NXDOMAIN and records every query, and a TLS
gRPC upstream."""

import concurrent.futures
import os
import socket
import struct
import subprocess
import threading

import grpc


def isolate(workdir, hosts):
    """Loopback up; `hosts` as /etc/hosts; 127.0.0.1 as the only nameserver."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)
    resolv = os.path.join(workdir, "resolv.conf")
    with open(resolv, "w") as f:
        f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)


def dns_server(seen):
    """Answers every query with NXDOMAIN and records `NAME TYPE` in `seen`."""
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


def grpc_upstream(workdir, address):
    """A TLS gRPC server on `address` answering /snirelay.test.Echo/Say with what it got,
    reversed, with workdir's cert.pem and key.pem. Returns it and the certificate."""
    with open(os.path.join(workdir, "key.pem"), "rb") as f:
        key = f.read()
    with open(os.path.join(workdir, "cert.pem"), "rb") as f:
        cert = f.read()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    handler = grpc.method_handlers_generic_handler(
        "snirelay.test.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req[::-1])},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    return server, cert


METHOD = "/snirelay.test.Echo/Say"
