"""WebSocket peers for the protocol tests.

    ws_peer.py server [--name NAME] [--mode echo|sink|push] [--events FILE]
        A `websockets` server on a free loopback port; prints "PORT <n>" and runs until killed.
          echo  answers each message with "<name>:<message>"
          sink  reads and never answers
          push  sends "<name>:tick" every 200 ms and ignores what it gets
    ws_peer.py raw-server --events FILE [--name NAME]
        A minimal hand-written server (plain sockets): it answers each text message with
        "<name>:<message>", and when it receives a close frame it appends "close <code>" to
        FILE and answers with close 1000 (it never echoes the code it got), then hangs up.
        Every text message it gets is appended to FILE as "text <message>".
    ws_peer.py client URL [--cookie C] [--send MSG]... [--idle S] [--every S --for S]
                          [--wait-close S]
        A `websockets` client: connects (with Cookie C), sends each MSG and reads one answer,
        optionally stays idle for S seconds, or sends every S seconds for a while, or waits up
        to S seconds for the server to close. Prints one JSON line: status, set_cookie,
        answers, close_code (the code of the close frame received, if any), error, and
        closed_after (seconds from the start of the wait to the close).
"""

import asyncio
import base64
import hashlib
import json
import socket
import struct
import sys
import threading
import time


def args_of(argv, spec):
    out = {k: v for k, v in spec.items()}
    i = 0
    while i < len(argv):
        key = argv[i].lstrip("-").replace("-", "_")
        if isinstance(spec.get(key), list):
            out[key] = out[key] + [argv[i + 1]]
        else:
            out[key] = argv[i + 1]
        i += 2
    return out


def server(argv):
    from websockets.asyncio.server import serve

    a = args_of(argv, {"name": "ws", "mode": "echo", "events": None})
    name, mode = a["name"], a["mode"]

    async def handler(ws):
        if mode == "push":
            try:
                while True:
                    await ws.send(f"{name}:tick")
                    await asyncio.sleep(0.2)
            except Exception:
                return
        async for msg in ws:
            if a["events"]:
                with open(a["events"], "a") as f:
                    f.write(f"text {msg}\n")
            if mode == "echo":
                await ws.send(f"{name}:{msg}")

    async def main():
        async with serve(handler, "127.0.0.1", 0, ping_interval=None) as srv:
            port = srv.sockets[0].getsockname()[1]
            print(f"PORT {port}", flush=True)
            await asyncio.Future()

    asyncio.run(main())


def read_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_frame(conn):
    b0, b1 = read_exact(conn, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(conn, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(conn, 8))[0]
    mask = read_exact(conn, 4) if b1 & 0x80 else b"\0\0\0\0"
    data = bytes(c ^ mask[i % 4] for i, c in enumerate(read_exact(conn, n)))
    return b0 & 0x0F, data


def send_frame(conn, opcode, data):
    head = bytes([0x80 | opcode])
    if len(data) < 126:
        head += bytes([len(data)])
    else:
        head += bytes([126]) + struct.pack("!H", len(data))
    conn.sendall(head + data)


def raw_server(argv):
    a = args_of(argv, {"name": "raw", "events": None})
    events = a["events"]

    def log(line):
        with open(events, "a") as f:
            f.write(line + "\n")

    def serve(conn):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            key = ""
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("sec-websocket-key:"):
                    key = line.split(":", 1)[1].strip()
            accept = base64.b64encode(
                hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
            ).decode()
            conn.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            while True:
                op, data = read_frame(conn)
                if op == 1:
                    log(f"text {data.decode()}")
                    send_frame(conn, 1, f"{a['name']}:{data.decode()}".encode())
                elif op == 8:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                    log(f"close {code}")
                    send_frame(conn, 8, struct.pack("!H", 1000))
                    return
                elif op == 9:
                    send_frame(conn, 10, data)
        except (EOFError, OSError):
            log("eof")
        finally:
            conn.close()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def client(argv):
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    url = argv[0]
    a = args_of(
        argv[1:],
        {"cookie": None, "send": [], "idle": None, "every": None, "for": None, "wait_close": None},
    )
    out = {"answers": []}
    headers = {"Cookie": a["cookie"]} if a["cookie"] else {}
    try:
        with connect(url, additional_headers=headers, open_timeout=10, close_timeout=3) as ws:
            out["status"] = ws.response.status_code
            out["set_cookie"] = ws.response.headers.get("Set-Cookie")
            for msg in a["send"]:
                ws.send(msg)
                out["answers"].append(ws.recv(timeout=10))
            start = time.monotonic()
            try:
                if a["idle"]:
                    ws.recv(timeout=float(a["idle"]))
                    out["unexpected"] = "a message while idle"
                elif a["every"]:
                    end = start + float(a["for"])
                    while time.monotonic() < end:
                        ws.send("beat")
                        time.sleep(float(a["every"]))
                    out["alive"] = True
                elif a["wait_close"]:
                    while True:
                        out["answers"].append(ws.recv(timeout=float(a["wait_close"])))
            except TimeoutError:
                out["alive"] = True
            except ConnectionClosed as e:
                out["close_code"] = e.rcvd.code if e.rcvd else None
                out["closed_after"] = time.monotonic() - start
    except InvalidStatus as e:
        out["status"] = e.response.status_code
        out["body"] = e.response.body.decode(errors="replace") if e.response.body else ""
    except ConnectionClosed as e:
        out["close_code"] = e.rcvd.code if e.rcvd else None
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


if __name__ == "__main__":
    {"server": server, "raw-server": raw_server, "client": client}[sys.argv[1]](sys.argv[2:])
