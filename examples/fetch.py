"""Fetch many HTTP URLs at once, each in its own coroutine.

    python examples/fetch.py                          # against a local test server
    python examples/fetch.py --count 20 --delay 0.5
    python examples/fetch.py http://example.com/ http://127.0.0.1:8000/

With no URLs, a local server (the standard library's, in a thread) answers
``--count`` pages, each after ``--delay`` seconds: fetched concurrently they
take about one delay in all, not one delay per page. At most
``--concurrency`` requests are open at a time. Plain http:// only: this is a
small HTTP/1.0 client written with ``bluelet.connect``.

Rewritten for today's Python from Adrian Sampson's demo/crawler.py in bluelet 0.2.0
(https://github.com/sampsyo/bluelet, MIT).
"""

import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import bluelet


def fetch(url, slots, timeout):
    """Coroutine: (status line, body) of ``url``."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError("only http:// URLs: %r" % url)
    path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    yield slots.acquire()       # wait for one of the --concurrency slots
    try:
        conn = yield bluelet.timeout(timeout, bluelet.connect(parts.hostname, parts.port or 80))
        try:
            # HTTP/1.0: the server closes the connection after the body, so
            # reading to the end of the stream reads exactly the response.
            request = "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, parts.netloc)
            yield conn.sendall(request.encode("latin-1"))
            response = yield bluelet.timeout(timeout, read_to_end(conn))
        finally:
            conn.close()
    finally:
        slots.release()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode("latin-1"), body


def read_to_end(conn):
    chunks = []
    while True:
        chunk = yield conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def report(url, slots, timeout):
    """Coroutine: fetch ``url`` and print one line about it, whatever happens."""
    started = time.monotonic()
    try:
        status, body = yield fetch(url, slots, timeout)
    except (OSError, ValueError) as error:   # refused, timed out, bad URL...
        status, body = "failed: %s" % (error,), b""
    seconds = time.monotonic() - started
    print("%-24s %6d bytes %5.2f s  %s" % (status, len(body), seconds, url), flush=True)


def fetch_all(urls, concurrency, timeout):
    slots = bluelet.Semaphore(concurrency)
    started = time.monotonic()
    yield bluelet.join_all([report(url, slots, timeout) for url in urls])
    print("%d URLs in %.2f s" % (len(urls), time.monotonic() - started))


class SlowPages(BaseHTTPRequestHandler):
    """The local test server: each page after ``delay`` seconds."""

    delay = 0.0

    def do_GET(self):
        time.sleep(self.delay)
        body = ("page %s\n" % self.path).encode() * 100
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # quiet: the fetcher prints its own lines


class LocalServer(ThreadingHTTPServer):
    # The default listen backlog, 5, would drop most of a burst of connections.
    request_queue_size = 128
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="*", help="http:// URLs (default: pages of a local server)")
    parser.add_argument("--count", type=int, default=10, help="pages from the local server")
    parser.add_argument("--delay", type=float, default=0.2, help="its delay per page")
    parser.add_argument("--concurrency", type=int, default=50, help="requests open at a time")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to connect, to read a reply")
    args = parser.parse_args()
    urls = args.urls
    if not urls:
        SlowPages.delay = args.delay
        server = LocalServer(("127.0.0.1", 0), SlowPages)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        urls = ["http://127.0.0.1:%d/%d" % (server.server_port, n) for n in range(args.count)]
    bluelet.run(fetch_all(urls, args.concurrency, args.timeout))


if __name__ == "__main__":
    main()
