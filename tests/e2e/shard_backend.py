#!/usr/bin/env python3
"""A fake shard for the end-to-end tests: answers every GET (any path) with `<name>\\n`.

usage: shard_backend.py NAME PORT_FILE

Binds 127.0.0.1 on a port the kernel picks and writes that port to PORT_FILE (atomically, via
a rename) once it accepts connections, so the caller never races for a free port. Runs until
killed. One thread per connection; no keep-alive (HTTP/1.0 answers close the connection).
"""

import http.server
import os
import sys


def main() -> None:
    name, port_file = sys.argv[1], sys.argv[2]
    body = (name + "\n").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # quiet: thousands of requests
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
