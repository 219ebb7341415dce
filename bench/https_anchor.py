"""The HTTPS half of bench/run's ceiling: a real nginx as the upstream (TLS, HTTP/2 offered over
ALPN, keep-alive, the upstream's JSON answer for any POST), and h2load, nghttp2's own client,
POSTing the gateway's request to it. h2load's CPU per call is what a bare HTTPS client spends on
this machine; the no-op gRPC server's is what a bare gRPC server spends; imgw does both, so the
ceiling row compares imgw's CPU per call with their sum. (h2load does not verify the server's
certificate, where imgw does; that costs once per connection, and both keep theirs open.)

Imported by bench/run.py. nginx (Debian's nginx-light) and h2load (nghttp2-client) are bench
dependencies, installed by .ci/deps."""

import os
import resource
import shutil
import socket
import subprocess
import time

ANSWER = '{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}'
# What imgw sends for one call of imgw-loadgen's distinct pairs (lib/upstream/set_msg_read.cc):
# the same path, query and body sizes, so that both clients move the same bytes.
BODY = '{"Report_Account":"u1234567","Peer_Account":"p1234567","MsgReadTime":1764633600}'
PATH = ("/v4/openim/admin_set_msg_read?sdkappid=1400000000&identifier=administrator&usersig="
        + "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oy0zLBwpbhzh3Mx8KCcXl3lUn6TT" * 4
        + "&random=123456789&contenttype=json")


def missing_tools():
    """The programs this module needs that are not installed."""
    return [tool for tool in ("nginx", "h2load") if shutil.which(tool) is None]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Nginx:
    """One nginx worker on a loopback port, answering every POST with the upstream's OK."""

    def __init__(self, work, cert, key):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{self.port} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      default_type application/json;
      return 200 '{ANSWER}';
    }}
  }}
}}
""")
        self.popen = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir],
                                      stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(self.dir, "nginx.err"), "w"))
        self.url = f"https://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.popen.poll() is not None:
                    break
                time.sleep(0.05)
        with open(os.path.join(self.dir, "error.log")) as f:
            raise RuntimeError(f"nginx did not start:\n{f.read()[-2000:]}")

    def cpu_seconds(self):
        """The worker's and the master's CPU (nginx forks its worker)."""
        total = 0.0
        for pid in [self.popen.pid] + self._children():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
        return total

    def _children(self):
        try:
            with open(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def h2load(work, url, calls, streams):
    """h2load POSTs BODY to `url` + PATH `calls` times over one TLS connection with `streams`
    streams at once. Returns (calls/s, CPU seconds of h2load itself, succeeded)."""
    body = os.path.join(work, "h2load-body.json")
    with open(body, "w") as f:
        f.write(BODY)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["h2load", "-n", str(calls), "-c", "1", "-m", str(streams), "-d", body,
                          "-H", "content-type: application/json", url + PATH],
                         capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"h2load exited {out.returncode}:\n{out.stderr[-2000:]}")
    rate = 0.0
    succeeded = 0
    for line in out.stdout.splitlines():
        if line.startswith("finished in"):
            rate = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            succeeded = int(line.split(",")[3].split()[0])
    return rate, cpu, succeeded
