"""A small static-file web server: one coroutine per client, one thread.

    python examples/httpd.py --directory . --port 8088
    python examples/httpd.py --port 0 --requests 3   # exit after 3 requests

HTTP/1.0, GET only, one request per connection. For a complete server
(HTTP/1.1 keep-alive, HEAD, timeouts, size limits, several processes) run
``python -m bluelet http``.

Rewritten for today's Python from Adrian Sampson's demo/httpd.py in bluelet 0.2.0
(https://github.com/sampsyo/bluelet, MIT).
"""

import argparse
import html
import mimetypes
import os
from urllib.parse import quote, unquote

import bluelet


def respond(conn, status, body, content_type="text/html; charset=utf-8"):
    head = "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        status, content_type, len(body))
    yield conn.sendall(head.encode() + body)


def send_file(conn, path):
    size = os.path.getsize(path)
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    head = "HTTP/1.0 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        content_type, size)
    yield conn.sendall(head.encode())
    with open(path, "rb") as f:
        while True:
            # bluelet.read runs a regular file's read in a worker thread, so
            # a slow disk does not stall the other clients; 64 KiB at a time
            # keeps a big file out of memory.
            chunk = yield bluelet.read(f, 65536)
            if not chunk:
                break
            yield conn.sendall(chunk)


def listing(directory):
    names = sorted(name + "/" if os.path.isdir(os.path.join(directory, name)) else name
                   for name in os.listdir(directory))
    items = "".join('<li><a href="%s">%s</a>' % (quote(name), html.escape(name)) for name in names)
    return ("<!DOCTYPE html><ul>%s</ul>\n" % items).encode()


def web_request(conn, root):
    """Serve one request on ``conn``."""
    request_line = yield conn.readline(b"\r\n")
    while (yield conn.readline(b"\r\n")) not in (b"\r\n", b""):
        pass  # the headers: not needed here
    print(request_line.decode("latin-1").strip(), flush=True)
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or parts[0] != "GET":
        yield respond(conn, "400 Bad Request", b"<h1>400 Bad Request</h1>\n")
        return
    # Resolve the path (symlinks too) and refuse anything outside root.
    path = os.path.realpath(os.path.join(root, unquote(parts[1].partition("?")[0]).lstrip("/")))
    if os.path.commonpath([root, path]) != root:
        yield respond(conn, "403 Forbidden", b"<h1>403 Forbidden</h1>\n")
    elif os.path.isdir(path):
        index = os.path.join(path, "index.html")
        if os.path.isfile(index):
            yield send_file(conn, index)
        else:
            yield respond(conn, "200 OK", listing(path))
    elif os.path.isfile(path):
        yield send_file(conn, path)
    else:
        yield respond(conn, "404 Not Found", b"<h1>404 Not Found</h1>\n")


def handle(conn, root):
    """Serve ``conn``, then close it, even if the request failed."""
    try:
        yield web_request(conn, root)
    except Exception as error:
        # An exception escaping a spawned coroutine ends bluelet.run(), so
        # one bad request would stop the server: report it here instead.
        print("error: %r" % (error,), flush=True)
    finally:
        conn.close()


def web_server(host, port, root, requests):
    listener = bluelet.Listener(host, port)
    print("serving %s on http://%s:%d/" % (root, host, listener.port), flush=True)
    handlers = []
    try:
        while requests is None or len(handlers) < requests:
            conn = yield listener.accept()
            handler = handle(conn, root)
            yield bluelet.spawn(handler)
            if requests is not None:
                handlers.append(handler)
        yield bluelet.join_all(handlers)
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088, help="0 picks a free port")
    parser.add_argument("--directory", default=".", help="what to serve (default: here)")
    parser.add_argument("--requests", type=int, help="exit after this many requests")
    args = parser.parse_args()
    root = os.path.realpath(args.directory)
    bluelet.run(web_server(args.host, args.port, root, args.requests), handle_signals=True)


if __name__ == "__main__":
    main()
