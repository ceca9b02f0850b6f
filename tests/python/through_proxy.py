"""Real proxy clients (curl, Python requests, grpcio) reaching NAME through snirelay's
CONNECT listener, inside a network and mount namespace the test made for them (see
tests/proxy_clients.rs and namespace.py) where no name can be looked up: /etc/hosts has localhost only, and
resolv.conf names 127.0.0.1, where a server records every query and answers NXDOMAIN.
The upstream runs on 127.0.0.2:8443 (HTTPS for curl and requests, then gRPC); the relay's
CONNECT listener on 127.0.0.1:3128 asks for a user and pins NAME there (`--resolve`), so it
asks no DNS either.

Usage: through_proxy.py SNIRELAY WORKDIR
Prints one JSON object: each client's result, the DNS queries seen, the relay's lines.
"""

import gc
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading

import grpc
import requests

from namespace import METHOD, dns_server, grpc_upstream, isolate

NAME = "translation.googleapis.com"
UPSTREAM = ("127.0.0.2", 8443)
# The listener asks for a user (tests/fixtures/users/valid: app1, bcrypt); every client
# takes the credentials from the proxy URL and sends them with its CONNECT.
PROXY = "http://app1:secret1@127.0.0.1:3128"


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def https_upstream(workdir):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem"))
    server = http.server.ThreadingHTTPServer(UPSTREAM, Hello)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    snirelay, workdir = sys.argv[1:3]
    hosts = os.path.join(workdir, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n")
    isolate(workdir, hosts)

    seen = []
    dns_server(seen)
    relay = subprocess.Popen(
        [snirelay, "run", "--log-format", "json", "--config", os.path.join(workdir, "rules.json"),
         "--resolve", f"{NAME}=127.0.0.2:8443"],
        stderr=subprocess.PIPE, text=True,
    )
    lines = []
    for line in relay.stderr:
        if '"listening"' in line:
            break
    reader = threading.Thread(target=lambda: lines.extend(relay.stderr), daemon=True)
    reader.start()

    os.environ["https_proxy"] = PROXY
    cert_path = os.path.join(workdir, "cert.pem")
    result = {}
    server = https_upstream(workdir)
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", cert_path, f"https://{NAME}/"],
        capture_output=True, text=True,
    )
    result["curl"] = {"ok": out.returncode == 0, "body": out.stdout, "error": out.stderr}
    try:
        answer = requests.get(f"https://{NAME}/", verify=cert_path, timeout=10)
        result["requests"] = {"ok": answer.ok, "body": answer.text}
        # requests leaves the tunnel's socket open until the response is collected; the
        # relay would keep the connection until its drain ran out.
        del answer
        gc.collect()
    except requests.RequestException as e:
        result["requests"] = {"ok": False, "error": str(e)}
    server.shutdown()
    server.server_close()

    server, cert = grpc_upstream(workdir, "%s:%d" % UPSTREAM)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert)
        with grpc.secure_channel(f"{NAME}:443", credentials) as channel:
            say = channel.unary_unary(METHOD)
            result["grpcio"] = {"ok": True, "body": say(b"olleh", timeout=10).decode()}
    except grpc.RpcError as e:
        result["grpcio"] = {"ok": False, "error": f"{e.code()}: {e.details()}"}
    server.stop(0)

    relay.terminate()
    relay.wait()
    reader.join(5)
    result["queries"] = seen
    result["connections"] = [
        json.loads(line) for line in lines if '"message":"connection"' in line
    ]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
