#!/usr/bin/env python3
"""The offline world of the workload test: a company's git forge, Python
package index and npm registry, each over HTTPS on an address of its own,
and the DNS server that names them. Run as root outside any agent cgroup:

    servers.py SOURCES STATE

SOURCES holds the repository's and the packages' files (tests/workload);
STATE is made here: the CA, the bare repository, the wheel, the npm tarball.
Prints "servers: ready" once everything listens, then serves until killed.
"""

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import socketserver
import ssl
import subprocess
import sys
import tarfile
import threading
import zipfile

# name -> address; every one serves HTTPS on 443.
HOSTS = {
    "git.corp.test": "10.23.0.2",
    "pypi.corp.test": "10.23.0.3",
    "npm.corp.test": "10.23.0.4",
}
DNS_ADDRESS = ("127.0.0.1", 53)
CA_FILE = "/usr/local/share/ca-certificates/corp-test-ca.crt"


def run(*args, **kwargs):
    subprocess.run(args, check=True, **kwargs)


def make_certificates(state):
    """A CA the system trusts (git, pip, curl) and one server certificate
    naming every host; Node is given the CA by NODE_EXTRA_CA_CERTS."""
    tls = os.path.join(state, "tls")
    os.makedirs(tls)
    key, ca = os.path.join(tls, "ca.key"), os.path.join(tls, "ca.crt")
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", ca, "-days", "30", "-subj", "/CN=corp test CA", stderr=subprocess.DEVNULL)
    server_key, csr, cert = (os.path.join(tls, n) for n in ("server.key", "server.csr", "server.crt"))
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", server_key, "-out", csr, "-subj", "/CN=corp.test", stderr=subprocess.DEVNULL)
    extensions = os.path.join(tls, "ext.cnf")
    with open(extensions, "w") as f:
        f.write("subjectAltName=" + ",".join("DNS:" + h for h in HOSTS) + "\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", key, "-CAcreateserial",
        "-out", cert, "-days", "30", "-extfile", extensions, stderr=subprocess.DEVNULL)
    shutil.copy(ca, CA_FILE)
    run("update-ca-certificates", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, server_key


def make_repository(sources, state):
    """project.git, bare, from SOURCES/project, open to clone and push."""
    git = os.path.join(state, "git")
    os.makedirs(git)
    bare = os.path.join(git, "project.git")
    work = os.path.join(state, "project-import")
    shutil.copytree(os.path.join(sources, "project"), work)
    env = dict(os.environ, GIT_AUTHOR_NAME="Corp", GIT_AUTHOR_EMAIL="dev@corp.test",
               GIT_COMMITTER_NAME="Corp", GIT_COMMITTER_EMAIL="dev@corp.test")
    run("git", "init", "-q", "-b", "main", work, env=env)
    run("git", "-C", work, "add", ".", env=env)
    run("git", "-C", work, "commit", "-q", "-m", "Initial import", env=env)
    run("git", "clone", "-q", "--bare", work, bare, env=env)
    run("git", "-C", bare, "config", "http.receivepack", "true")
    shutil.rmtree(work)
    return git


def make_wheel(sources, state):
    """corp_greeting 1.0 as a pure-Python wheel, and the simple index page naming it."""
    name, version = "corp_greeting", "1.0"
    dist_info = f"{name}-{version}.dist-info"
    files = {}
    package = os.path.join(sources, "packages", name)
    for entry in sorted(os.listdir(package)):
        with open(os.path.join(package, entry), "rb") as f:
            files[f"{name}/{entry}"] = f.read()
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: corp-greeting\nVersion: {version}\n".encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: servers.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel_name = f"{name}-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    wheel = buffer.getvalue()
    sha256 = hashlib.sha256(wheel).hexdigest()
    page = (f'<!DOCTYPE html><html><body><a href="/packages/{wheel_name}#sha256={sha256}">'
            f"{wheel_name}</a></body></html>\n").encode()
    return {"/simple/corp-greeting/": ("text/html", page), f"/packages/{wheel_name}": ("application/octet-stream", wheel)}


def make_npm_package(sources):
    """corp-left-pad 1.0.0: its registry document and tarball."""
    name, version = "corp-left-pad", "1.0.0"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        package = os.path.join(sources, "packages", name)
        for entry in sorted(os.listdir(package)):
            tar.add(os.path.join(package, entry), arcname=f"package/{entry}")
    tarball = buffer.getvalue()
    url = f"https://npm.corp.test/{name}/-/{name}-{version}.tgz"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    document = {
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {version: {
            "name": name, "version": version, "main": "index.js",
            "dist": {"tarball": url, "shasum": hashlib.sha1(tarball).hexdigest(), "integrity": integrity},
        }},
    }
    return {f"/{name}": ("application/json", json.dumps(document).encode()),
            f"/{name}/-/{name}-{version}.tgz": ("application/octet-stream", tarball)}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self.serve()

    def do_POST(self):
        self.serve()

    def serve(self):
        if self.server.git_root:
            return self.git()
        path = self.path.split("?")[0]
        found = self.server.files.get(path) or self.server.files.get(path + "/")
        if not found:
            return self.answer(404, "text/plain", b"not found\n")
        self.answer(200, *found)

    def answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def git(self):
        """git's smart HTTP protocol through git http-backend (CGI)."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=self.server.git_root, GIT_HTTP_EXPORT_ALL="1",
                   REQUEST_METHOD=self.command, PATH_INFO=path, QUERY_STRING=query,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
                   REMOTE_USER="agent", REMOTE_ADDR=self.client_address[0],
                   GIT_COMMITTER_NAME="agent", GIT_COMMITTER_EMAIL="agent@corp.test")
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, content_type = 200, "text/plain"
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key.lower() == "content-type":
                content_type = value.strip()
        self.answer(status, content_type, payload)


class HttpsServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def https_server(address, context, files=None, git_root=None):
    server = HttpsServer((address, 443), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.files, server.git_root = files or {}, git_root
    threading.Thread(target=server.serve_forever, daemon=True).start()


class Dns(socketserver.BaseRequestHandler):
    """A records for HOSTS; an empty answer for their other types; NXDOMAIN otherwise."""

    def handle(self):
        query, sock = self.request
        if len(query) < 12:
            return
        at, labels = 12, []
        while at < len(query) and query[at]:
            labels.append(query[at + 1:at + 1 + query[at]].decode("ascii", "replace"))
            at += 1 + query[at]
        question = query[12:at + 5]
        qtype = int.from_bytes(query[at + 1:at + 3], "big")
        name = ".".join(labels).lower()
        address = HOSTS.get(name)
        answers = b""
        rcode = 0 if address else 3
        if address and qtype == 1:
            answers = b"\xc0\x0c\x00\x01\x00\x01" + (60).to_bytes(4, "big") + b"\x00\x04" + bytes(
                int(part) for part in address.split("."))
        flags = (0x8180 | rcode).to_bytes(2, "big")
        counts = b"\x00\x01" + (1 if answers else 0).to_bytes(2, "big") + b"\x00\x00\x00\x00"
        sock.sendto(query[:2] + flags + counts + question + answers, self.client_address)


def main():
    sources, state = sys.argv[1], sys.argv[2]
    os.makedirs(state)
    for address in HOSTS.values():
        run("ip", "addr", "replace", f"{address}/32", "dev", "lo")
    cert, key = make_certificates(state)
    git_root = make_repository(sources, state)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    https_server(HOSTS["git.corp.test"], context, git_root=git_root)
    https_server(HOSTS["pypi.corp.test"], context, files=make_wheel(sources, state))
    https_server(HOSTS["npm.corp.test"], context, files=make_npm_package(sources))
    dns = socketserver.ThreadingUDPServer(DNS_ADDRESS, Dns)
    threading.Thread(target=dns.serve_forever, daemon=True).start()
    print("servers: ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
