"""A real gRPC client (grpcio, its default c-ares resolver) calling NAME through snirelay,
inside a network and mount namespace the test made for it (see tests/grpc_client.rs and
namespace.py):
this script's own /etc/hosts and /etc/resolv.conf, a DNS server on 127.0.0.1:53 that
records every query, a TLS gRPC upstream on 127.0.0.2:8443, and the relay on
127.0.0.1:443 pinning NAME to that upstream.

Usage: through_relay.py SNIRELAY WORKDIR HOSTS_FILE
Prints one JSON object: whether the call succeeded, its answer, and the DNS queries seen.
"""

import json
import os
import subprocess
import sys
import threading

import grpc

from namespace import METHOD, dns_server, grpc_upstream, isolate

NAME = "translation.googleapis.com"


def main():
    snirelay, workdir, hosts = sys.argv[1:4]
    isolate(workdir, hosts)

    seen = []
    dns_server(seen)
    server, cert = grpc_upstream(workdir, "127.0.0.2:8443")
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
