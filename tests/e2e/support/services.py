"""Test doubles of services Debian does not package, speaking just enough of each protocol for
the agent's probes (issue 19), each either open (answers anyone) or closed (asks for credentials):

    services.py KIND MODE PORT [CERT KEY]

KIND: docker | elasticsearch | kubelet | jupyter | metrics | pprof | mongodb | silent | garbage
MODE: open | auth
CERT, KEY: serve HTTP over TLS with this certificate (the kubelet's 10250 is HTTPS).

Binds 0.0.0.0:PORT. Every request is appended to the file named by SERVICES_LOG (one line each:
the method, the path and the user agent), so a test can see what a probe sent: that it wrote
nothing and said who it was. `silent` accepts and never answers (a probe must give up in time);
`garbage` answers any request with bytes no protocol knows.
"""
import json, os, socket, socketserver, ssl, struct, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KIND, MODE, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
LOG = os.environ.get("SERVICES_LOG")
lock = threading.Lock()


def log(line):
    if LOG:
        with lock, open(LOG, "a") as f:
            f.write(line + "\n")


HTTP_ANSWERS = {
    # path: (body when open, content type)
    "docker": {"/version": ({"ApiVersion": "1.43", "Version": "24.0.7"}, "application/json"),
               "/containers/json": ([], "application/json")},
    "elasticsearch": {"/": ({"name": "node-1", "cluster_name": "test", "version": {"number": "8.11.1"},
                             "tagline": "You Know, for Search"}, "application/json")},
    "kubelet": {"/pods": ({"kind": "PodList", "apiVersion": "v1", "items": []}, "application/json")},
    "jupyter": {"/api/kernels": ([], "application/json")},
    "metrics": {"/metrics": ("# HELP up 1 if up\n# TYPE up gauge\nup 1\n", "text/plain")},
    "pprof": {"/debug/pprof/": ("<html>Types of profiles available: profile heap goroutine</html>", "text/html")},
}


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        log(f"{self.command} {self.path} {self.headers.get('User-Agent', '')}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        path = self.path.split("?", 1)[0]
        known = HTTP_ANSWERS[KIND]
        if path not in known:
            return self.send(404, b"not found", "text/plain")
        if MODE == "auth":
            if KIND == "jupyter":
                self.send_response(302)
                self.send_header("Location", "/login?next=" + path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self.send(401, b'{"error":"unauthorized"}', "application/json",
                             {"WWW-Authenticate": 'Basic realm="test"'})
        body, kind = known[path]
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send(200, data, kind)

    def send(self, status, data, kind, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = answer
    do_POST = answer


def bson(fields):
    """A BSON document of (name, value) pairs: float, int, str, bool, or a list of documents."""
    body = b""
    for name, value in fields:
        key = name.encode() + b"\0"
        if isinstance(value, bool):
            body += b"\x08" + key + (b"\x01" if value else b"\x00")
        elif isinstance(value, float):
            body += b"\x01" + key + struct.pack("<d", value)
        elif isinstance(value, int):
            body += b"\x10" + key + struct.pack("<i", value)
        elif isinstance(value, str):
            s = value.encode() + b"\0"
            body += b"\x02" + key + struct.pack("<i", len(s)) + s
        elif isinstance(value, list):
            items = b"".join(b"\x03" + str(i).encode() + b"\0" + doc for i, doc in enumerate(value))
            body += b"\x04" + key + struct.pack("<i", len(items) + 5) + items + b"\0"
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def first_key(doc):
    """The name of a BSON document's first element: the command."""
    end = doc.index(b"\0", 5)
    return doc[5:end].decode(errors="replace")


class Mongo(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        while True:
            head = s.recv(16, socket.MSG_WAITALL)
            if len(head) < 16:
                return
            length, request_id, _, opcode = struct.unpack("<iiii", head)
            rest = s.recv(length - 16, socket.MSG_WAITALL)
            if opcode != 2013:
                return
            command = first_key(rest[5:])
            log(f"OP_MSG {command}")
            if command in ("hello", "isMaster", "ismaster"):
                reply = bson([("isWritablePrimary", True), ("maxWireVersion", 17), ("ok", 1.0)])
            elif MODE == "auth":
                reply = bson([("ok", 0.0), ("errmsg", "command listDatabases requires authentication"),
                              ("code", 13), ("codeName", "Unauthorized")])
            else:
                reply = bson([("databases", [bson([("name", "admin")]), bson([("name", "orders")])]),
                              ("ok", 1.0)])
            msg = struct.pack("<I", 0) + b"\0" + reply
            s.sendall(struct.pack("<iiii", 16 + len(msg), request_id + 1000, request_id, 2013) + msg)


class Silent(socketserver.BaseRequestHandler):
    def handle(self):
        log("connected")
        self.request.settimeout(60)
        try:
            while self.request.recv(4096):
                pass
        except OSError:
            pass


class Garbage(socketserver.BaseRequestHandler):
    def handle(self):
        data = self.request.recv(4096)
        log(f"received {len(data)} bytes")
        self.request.sendall(b"\x00\xffZZ-this-is-no-protocol-\x1b[31m\r\n" * 3)


class Tcp(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


if KIND in HTTP_ANSWERS:
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Http)
    if len(sys.argv) > 5:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[4], sys.argv[5])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
else:
    handler = {"mongodb": Mongo, "silent": Silent, "garbage": Garbage}[KIND]
    server = Tcp(("0.0.0.0", PORT), handler)
print("ready", flush=True)
server.serve_forever()
