"""A real gRPC server and client (grpcio, generic handlers, raw bytes messages) for the
protocol tests.

    grpc_peer.py server [--tls CERT KEY] [--client-ca CA] [--health SERVING|NOT_SERVING]
                        [--name NAME]
        Serves on a free loopback port and prints "PORT <n>", then runs until killed (with
        --client-ca, TLS clients must present a certificate issued by CA):
          /test.Echo/Unary       answers "<name>:" + the request, and echoes back as trailing
                                 metadata what it saw of x-api-key, x-request-id,
                                 x-forwarded-for and authorization
          /test.Echo/Stream      answers the request N times ("<name>:<i>"), N = first byte
          /test.Echo/Slow        sleeps 2 s, then answers
          /test.Echo/Fail        aborts with PERMISSION_DENIED "backend says no"
          /grpc.health.v1.Health/Check  answers the --health status
    grpc_peer.py client TARGET METHOD PAYLOAD [--timeout S] [--meta K=V]... [--tls CA [SNI]]
        Makes one call and prints JSON: code, details, responses, trailing metadata.
"""

import json
import sys
import time
from concurrent import futures

import grpc


def server(args):
    tls = None
    client_ca = None
    health = "SERVING"
    name = "backend"
    i = 0
    while i < len(args):
        if args[i] == "--tls":
            tls = (args[i + 1], args[i + 2])
            i += 3
        elif args[i] == "--health":
            health = args[i + 1]
            i += 2
        elif args[i] == "--client-ca":
            client_ca = args[i + 1]
            i += 2
        elif args[i] == "--name":
            name = args[i + 1]
            i += 2
        else:
            raise SystemExit(f"unknown argument {args[i]}")

    def unary(request, context):
        seen = dict(context.invocation_metadata())
        context.set_trailing_metadata(
            tuple(
                (f"seen-{k}", seen[k])
                for k in ("x-api-key", "x-request-id", "x-forwarded-for", "authorization")
                if k in seen
            )
        )
        return name.encode() + b":" + request

    def stream(request, context):
        n = request[0] if request else 1
        for k in range(n):
            yield f"{name}:{k}".encode()

    def slow(request, context):
        time.sleep(2)
        return b"late"

    def fail(request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "backend says no")

    status = {"SERVING": 1, "NOT_SERVING": 2}[health]

    def check(request, context):
        return bytes([0x08, status])

    ident = lambda b: b  # noqa: E731
    handlers = [
        grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
                "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
                "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
                "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
            },
        ),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(check, ident, ident)},
        ),
    ]
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=handlers)
    if tls:
        with open(tls[0], "rb") as c, open(tls[1], "rb") as k:
            pair = [(k.read(), c.read())]
        if client_ca:
            with open(client_ca, "rb") as f:
                creds = grpc.ssl_server_credentials(
                    pair, root_certificates=f.read(), require_client_auth=True
                )
        else:
            creds = grpc.ssl_server_credentials(pair)
        port = srv.add_secure_port("127.0.0.1:0", creds)
    else:
        port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    print(f"PORT {port}", flush=True)
    srv.wait_for_termination()


def client(args):
    target, method, payload = args[0], args[1], args[2].encode()
    timeout = None
    meta = []
    tls = None
    i = 3
    while i < len(args):
        if args[i] == "--timeout":
            timeout = float(args[i + 1])
            i += 2
        elif args[i] == "--meta":
            k, v = args[i + 1].split("=", 1)
            meta.append((k, v))
            i += 2
        elif args[i] == "--tls":
            tls = args[i + 1 : i + 3]
            i += 3
        elif args[i] == "--count":
            payload = bytes([int(args[i + 1])])
            i += 2
        else:
            raise SystemExit(f"unknown argument {args[i]}")
    if tls:
        with open(tls[0], "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", tls[1])] if len(tls) > 1 else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    ident = lambda b: b  # noqa: E731
    out = {}
    try:
        if method.endswith("/Stream"):
            call = channel.unary_stream(method, ident, ident)(
                payload, timeout=timeout, metadata=meta
            )
            out["responses"] = [r.decode() for r in call]
            out["code"] = call.code().name
            out["details"] = call.details()
            out["trailing"] = dict(call.trailing_metadata() or ())
        else:
            resp, call = channel.unary_unary(method, ident, ident).with_call(
                payload, timeout=timeout, metadata=meta
            )
            out["responses"] = [resp.decode()]
            out["code"] = call.code().name
            out["details"] = call.details()
            out["trailing"] = dict(call.trailing_metadata() or ())
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details()
        out["trailing"] = dict(e.trailing_metadata() or ())
    print(json.dumps(out))


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](sys.argv[2:])
