#!/usr/bin/env python3
"""A test double of the EC2 (IMDSv2) and Azure instance metadata services, on loopback.

It keeps the real services' rules that matter to a client: EC2 hands out a token only to a PUT
with a TTL header and no X-Forwarded-For, and answers GETs only with a valid token; Azure answers
only with `Metadata: true` and an api-version. Behaviours for tests:
  ok             answer as the service would
  no-tags        (aws) tags in metadata not enabled: the tag listing is a 404
  refuse-token   (aws) the token PUT is refused with 403
  hang-token     (aws) the token PUT is never answered (what a hop limit of 1 looks like)
  slow           every answer comes after --delay seconds
With --sign-key KEY.pem (aws), the identity document's signature is served as EC2 serves it
(/latest/dynamic/instance-identity/signature: base64 of the RSA-SHA256 signature), made with
openssl and that key.
Prints the port it listens on, then serves until killed.
"""
import base64
import subprocess
import argparse
import json
import secrets
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

p = argparse.ArgumentParser()
p.add_argument("--cloud", choices=["aws", "azure"], required=True)
p.add_argument("--behaviour", default="ok", choices=["ok", "no-tags", "refuse-token", "hang-token", "slow"])
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--instance-id", required=True)
p.add_argument("--tag", action="append", default=[], help="key=value")
p.add_argument("--sign-key", help="PEM RSA key that signs the identity document")
args = p.parse_args()
DOC = json.dumps({"accountId": "123456789012", "architecture": "x86_64", "availabilityZone": "eu-west-1b",
                  "imageId": "ami-0abcdef1234567890", "instanceId": args.instance_id,
                  "instanceType": "t3.small", "region": "eu-west-1", "version": "2017-09-30"}, indent=2)
SIGNATURE = None
if args.sign_key:
    raw = subprocess.run(["openssl", "dgst", "-sha256", "-sign", args.sign_key], input=DOC.encode(),
                         capture_output=True, check=True).stdout
    SIGNATURE = base64.encodebytes(raw).decode()
TAGS = dict(t.split("=", 1) for t in args.tag)
TOKENS = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body=b"", ctype="text/plain"):
        if args.behaviour == "slow":
            time.sleep(args.delay)
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        if args.cloud != "aws" or self.path != "/latest/api/token":
            return self.reply(404, "Not Found")
        if args.behaviour == "hang-token":
            time.sleep(60)
            return
        if args.behaviour == "refuse-token":
            return self.reply(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600 or self.headers.get("X-Forwarded-For"):
            return self.reply(400, "Bad Request")
        token = secrets.token_urlsafe(32)
        TOKENS.add(token)
        self.reply(200, token)

    def do_GET(self):
        url = urlparse(self.path)
        if args.cloud == "azure":
            if self.headers.get("Metadata") != "true" or "api-version" not in parse_qs(url.query):
                return self.reply(400, json.dumps({"error": "Bad request"}), "application/json")
            if url.path != "/metadata/instance":
                return self.reply(404, "Not Found")
            compute = {
                "vmId": args.instance_id,
                "name": "vm-test",
                "location": "westeurope",
                "zone": "2",
                "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
                "resourceGroupName": "rg-test",
                "vmSize": "Standard_B2s",
                "tags": ";".join(f"{k}:{v}" for k, v in TAGS.items()),
                "tagsList": [{"name": k, "value": v} for k, v in TAGS.items()],
                "storageProfile": {"imageReference": {"id": "", "publisher": "debian", "offer": "debian-12",
                                                      "sku": "12-gen2", "version": "latest"}},
            }
            return self.reply(200, json.dumps({"compute": compute, "network": {}}), "application/json")
        # EC2: IMDSv2 only.
        if self.headers.get("X-aws-ec2-metadata-token") not in TOKENS:
            return self.reply(401, "Unauthorized")
        if url.path == "/latest/dynamic/instance-identity/document":
            return self.reply(200, DOC, "application/json")
        if url.path == "/latest/dynamic/instance-identity/signature" and SIGNATURE:
            return self.reply(200, SIGNATURE)
        if url.path.rstrip("/") == "/latest/meta-data/tags/instance":
            if args.behaviour == "no-tags":
                return self.reply(404, "Not Found")
            return self.reply(200, "\n".join(TAGS))
        prefix = "/latest/meta-data/tags/instance/"
        if url.path.startswith(prefix) and args.behaviour != "no-tags":
            key = unquote(url.path[len(prefix):])
            if key in TAGS:
                return self.reply(200, TAGS[key])
        self.reply(404, "Not Found")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
