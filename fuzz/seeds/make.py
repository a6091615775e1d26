#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/ from the project's own inputs: the
config/ catalogs and configs, and request and response heads as clients and OpenStack
services send them. Re-run after changing it (`python3 fuzz/seeds/make.py`); the corpora
are committed, so a fresh clone fuzzes from the same seeds. Inputs a fuzz run found
(crashes included, once fixed) are added by hand under names saying what they are."""

import json
import os
import re
import struct
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.dirname(HERE)
ROOT = os.path.dirname(FUZZ)
CONFIG = os.path.join(ROOT, "config")


def write(target, name, data):
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(name):
    with open(os.path.join(CONFIG, name), "rb") as f:
        return f.read()


# --- scope: request header blocks --------------------------------------------------
HOST = "Host: 192.168.142.244:9292\r\n"
TOKEN = "gAAAAABmY3Ft0kR2pQW1xY8sL9rE4vTqZ3uN7bH6cJ0dF5aK2mG8iO1pS4wX7yV9zB3nM6qR"
scope_seeds = {
    "x-scope-one-service": HOST + 'X-Scope: {"image": "RegionTwo"}\r\n\r\n',
    "x-scope-two-services": HOST
    + 'X-Scope: {"image": "RegionTwo", "identity": "RegionOne"}\r\n\r\n',
    "x-scope-alternatives": HOST + 'X-Scope: {"compute": "RegionTwo|RegionOne"}\r\n\r\n',
    "x-scope-empty-alternative": HOST + 'X-Scope: {"compute": "RegionTwo|"}\r\n\r\n',
    "x-scope-not-a-string": HOST + 'X-Scope: {"compute": 2}\r\n\r\n',
    "x-scope-blank-then-token": HOST
    + "X-Scope:  \r\n"
    + f'X-Auth-Token: {TOKEN}!SCOPE!{{"image": "RegionTwo"}}\r\n\r\n',
    "auth-token-scope": HOST
    + f'X-Auth-Token: {TOKEN}!SCOPE!{{"compute": "RegionTwo", "network": "RegionOne"}}\r\n\r\n',
    "auth-token-percent-encoded": HOST
    + "X-Auth-Token: "
    + TOKEN
    + "!SCOPE!"
    + urllib.parse.quote('{"image": "RegionTwo"}', safe="")
    + "\r\n\r\n",
    "subject-token-scope": HOST
    + f"X-Auth-Token: {TOKEN}\r\n"
    + f'X-Subject-Token: {TOKEN}!SCOPE!{{"identity": "RegionTwo"}}\r\n\r\n',
    "token-without-scope": HOST + f"X-Auth-Token: {TOKEN}\r\nAccept: application/json\r\n\r\n",
    "no-scope": HOST + "User-Agent: python-glanceclient\r\nAccept: */*\r\n\r\n",
    "x-scope-escapes": HOST + 'X-Scope: {"image": "Region\\u0054wo", "\\u0063ompute": "RegionOne"}\r\n\r\n',
    "x-scope-two-headers": HOST
    + 'X-Scope: {"image": "RegionTwo"}\r\nX-Scope: {"image": "RegionOne"}\r\n\r\n',
}
for name, text in scope_seeds.items():
    write("scope", name, text)
# `#` selects the built-scope round trip; the rest is read by `arbitrary`.
write("scope", "built-round-trip", b"#\x01\x05token\x02\x05image\x09RegionTwo\x01\x00")

# --- catalog: the project's endpoint lists, and their URLs --------------------------
one = read("endpoint-list-RegionOne.json")
two = read("endpoint-list-RegionTwo.json")
write("catalog", "endpoint-list-RegionOne.json", one)
write("catalog", "endpoint-list-RegionTwo.json", two)
write("catalog", "both-regions-merged", one + b"\xff" + two)
write("catalog", "same-file-twice", one + b"\xff" + one)
urls = sorted({row["URL"] for f in (one, two) for row in json.loads(f)})
for i, url in enumerate(urls):
    write("catalog", f"url-{i:02}", url)
for name, url in {
    "url-https-ipv6": "https://[FD00::1]:5000/identity/v3?x=1#f",
    "url-dollar-template": "http://Controller:8776/v3/$(project_id)s",
    "url-cleaned-already": "192.168.142.244:8774/v2.1/",
    "url-userinfo": "http://admin@192.168.142.244:5000",
}.items():
    write("catalog", name, url)

# --- config: the project's configs, stripped of comments, and every optional table ------
for name in ("RegionOne.toml", "RegionTwo.toml"):
    text = read(name).decode()
    write("config", name, text)
    lines = [re.sub(r"\s+#.*$", "", l) for l in text.splitlines() if not l.lstrip().startswith("#")]
    write("config", name.replace(".toml", "-no-comments.toml"), "\n".join(l for l in lines if l.strip()) + "\n")
write(
    "config",
    "minimal.toml",
    'region = "RegionOne"\ncatalog = ["endpoint-list-RegionOne.json", "/abs/endpoint-list-RegionTwo.json"]\nbackend = "192.168.142.245"\n',
)
write(
    "config",
    "every-table.toml",
    """region = "RegionOne"
catalog = ["endpoint-list-RegionOne.json", "endpoint-list-RegionTwo.json"]
backend = ["192.168.142.245", { address = "192.168.142.246", weight = 2 }, { address = "192.168.142.247", backup = true }]
[scope.defaults]
identity = "RegionOne"
[timeouts]
request_header = "10s"
connect = "10s"
idle = "1m"
[ports.9292]
idle = "6h"
backend = ["192.168.142.245:9292", { address = "192.168.142.246:9292", maxconn = 8 }]
balance = "source"
health_path = "/healthcheck"
maxconn_per_server = 16
queue = "2m"
certificate = "tls/glance.pem"
key = "tls/glance.key"
backend_tls = true
ca_file = "tls/backends.pem"
[tls]
certificate = "tls/vip.pem"
key = "tls/vip.key"
ca_file = "/etc/ssl/ca.pem"
profile = "intermediate"
[[tls.sni]]
certificate = "tls/public.pem"
key = "tls/public.key"
[[redirect]]
bind = "192.168.142.250:80"
https_port = 8443
exempt = ["/.well-known/acme-challenge/"]
exempt_backend = "127.0.0.1:8402"
[proxy]
max_header_bytes = 16384
shutdown_grace = "30s"
retries = 3
balance = "roundrobin"
maxconn_per_server = 0
max_connections = 40000
[health]
inter = "2s"
rise = 2
fall = 5
timeout = "2s"
[vip]
address = "192.168.142.244"
interface = "eth2"
[vrrp]
vrid = 51
priority = 150
advert_int = "1s"
version = 2
auth_pass = "secret"
preempt = true
peers = []
[ebpf]
mode = "auto"
deny = ["203.0.113.0/24"]
[admin]
bind = ["127.0.0.1:9101"]
metrics = true
[log]
format = "json"
[process]
user = "scope-router"
[[passthrough]]
name = "mariadb"
bind = "192.168.142.244:3306"
backend = "192.168.142.245:3306"
mode = "tcp"
idle = "1h"
""",
)

# --- framing: 4 bytes seeding the read sizes, then a client's byte stream ------------
def framed(seed, stream):
    return struct.pack("<I", seed) + stream.encode()

GET = "GET /v2/images HTTP/1.1\r\nHost: 192.168.142.244:9292\r\nX-Auth-Token: t\r\nAccept: application/json\r\n\r\n"
body = '{"server": {"name": "vm1"}}'
POST = f"POST /v2.1/servers HTTP/1.1\r\nHost: 192.168.142.244:8774\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
CHUNKED = "PUT /v2/images/1/file HTTP/1.1\r\nHost: 192.168.142.244:9292\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Checksum: abc\r\n\r\n"
framing_seeds = {
    "get": GET,
    "post-content-length": POST,
    "put-chunked-trailers": CHUNKED,
    "pipeline": "\r\n" + GET + POST + CHUNKED + GET,
    "both-framings": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + GET,
    "content-length-list": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc" + GET,
    "content-length-conflict": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd" + GET,
    "te-gzip-chunked": "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + GET,
    "upgrade": "GET /websockify HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    "bare-lf-chunk": "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n" + GET,
}
for i, (name, stream) in enumerate(framing_seeds.items()):
    write("framing", name, framed(0x9E3779B9 + i, stream))

# --- upstream_response: a method byte (0 GET, 1 HEAD, 2 POST, 3 PUT), then the backend's bytes
j = '{"versions": {"values": [{"id": "v3.14", "status": "stable"}]}}'
responses = {
    "get-200-json": (0, f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(j)}\r\nVary: X-Auth-Token\r\nx-openstack-request-id: req-1\r\n\r\n{j}"),
    "post-201-after-100": (2, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nLocation: http://192.168.142.244:8774/v2.1/servers/1\r\nContent-Length: 2\r\n\r\n{}"),
    "put-204": (3, "HTTP/1.1 204 No Content\r\nx-openstack-request-id: req-2\r\nConnection: keep-alive\r\n\r\n"),
    "head-200": (1, "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n"),
    "get-chunked-trailers": (0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\nContent-MD5: x\r\nX-Trailer: 1\r\n\r\n"),
    "get-http10-keep-alive": (0, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
    "get-until-close": (0, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close"),
    "get-both-framings": (0, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "get-conflicting-lengths": (0, "HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\nabcde"),
    "get-304": (0, "HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n"),
    "get-101": (0, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
}
for name, (m, wire) in responses.items():
    write("upstream_response", name, bytes([m]) + wire.encode())
