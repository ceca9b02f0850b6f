"""The gRPC figure of `cargo bench --bench longhaul`: a real grpcio client and server.

  grpc_call.py serve ADDR:PORT CERT KEY     a TLS gRPC server answering /snirelay.bench.Echo/Say
  grpc_call.py call ADDR:PORT NAME CERT N   N calls, each on a new channel (a new connection),
                                            with NAME as the TLS server name; prints the
                                            milliseconds from creating the channel to the
                                            answer, as a JSON list
"""

import json
import sys
import time
from concurrent import futures

import grpc

METHOD = "/snirelay.bench.Echo/Say"


def serve(addr, cert, key):
    with open(key, "rb") as f:
        key = f.read()
    with open(cert, "rb") as f:
        cert = f.read()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    handler = grpc.method_handlers_generic_handler(
        "snirelay.bench.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req[::-1])},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(addr, grpc.ssl_server_credentials([(key, cert)]))
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def call(addr, name, cert, n):
    with open(cert, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    options = [("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]
    took = []
    for _ in range(int(n)):
        start = time.monotonic()
        with grpc.secure_channel(addr, credentials, options=options) as channel:
            answer = channel.unary_unary(METHOD)(b"olleh", timeout=60)
            took.append((time.monotonic() - start) * 1e3)
        assert answer == b"hello", answer
    print(json.dumps(took), flush=True)


if __name__ == "__main__":
    {"serve": serve, "call": call}[sys.argv[1]](*sys.argv[2:])
