"""The servers behind ``python -m bluelet``: echo, and static files over HTTP.

Both are connection handlers for ``bluelet.serve()``, the accept loop that
``bluelet.server()`` runs too (and each ``--workers`` process). Only the
public bluelet API is used, so this is also a worked example of a protocol
server written with it.

The HTTP server speaks HTTP/1.0 and 1.1, methods GET and HEAD:

- A request path is percent-decoded (to bytes, then to a file name as the
  OS would) and split into segments. A ".." segment is refused (403), and so
  is any path whose real location, symlinks resolved, is outside the served
  directory: nothing outside it is ever sent.
- Files are streamed one chunk at a time: each read runs in a worker thread
  (``bluelet.read`` on a regular file) and is sent before the next, so a
  connection holds one chunk in memory whatever the file size. Locating a
  file (stat, realpath, open, directory listing) also runs in a thread:
  a slow disk stalls one request, not the loop.
- Connections persist (HTTP/1.1 unless ``Connection: close``; HTTP/1.0 with
  ``Connection: keep-alive``) for up to MAX_REQUESTS requests. A client
  that takes longer than ``timeout`` seconds to send a request head, or to
  take a chunk of its response, is dropped.
- A malformed request is answered 400 (431, 505 where they fit) and its
  connection closed. Nothing a client does ends the server: ``serve()``
  logs an exception that escapes a handler and carries on.
"""

import email.utils
import html
import logging
import mimetypes
import os
import re
import socket
import stat
import time
from http import HTTPStatus
from typing import Any, BinaryIO, Dict, Generator, List, NamedTuple, Optional, Tuple, Union
from urllib.parse import quote, unquote, unquote_to_bytes, urlsplit

import bluelet

__all__ = ["echo", "StaticFiles"]

_Coroutine = Generator[Any, Any, Any]

access_log = logging.getLogger("bluelet.http")


def echo(conn: bluelet.Connection) -> _Coroutine:
    """Handler: send back everything the client sends, until it closes."""
    while True:
        data = yield conn.recv(65536)
        if not data:
            return
        yield conn.sendall(data)


# ---------------------------------------------------------------------------
# HTTP: requests
# ---------------------------------------------------------------------------

#: Requests served on one connection before it is closed (nginx's keepalive_requests
#: default): bounds what one connection holds, yet rarely costs a reconnect.
MAX_REQUESTS = 1000
#: Largest request head (request line and headers) accepted.
MAX_HEAD = 32 * 1024
#: Bytes read from a file and sent per step.
CHUNK = 256 * 1024

SERVER = "bluelet/%s" % bluelet.__version__

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[!-~\x80-\xff]+")          # visible, no spaces or controls
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # not allowed in a header value


class _HttpError(Exception):
    """A request we answer with ``status`` and then close the connection."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


class _Request(NamedTuple):
    line: str                   # the request line, for the log
    method: str
    path: str                   # the URL path, still percent-encoded
    headers: Dict[str, str]     # names in lower case
    keep_alive: bool            # the client allows another request after this one


def _read_head(conn: bluelet.Connection, buf: bytearray) -> _Coroutine:
    """Coroutine: the next request head, without its blank line; None at EOF.

    ``buf`` holds what was received past the previous head (a pipelined
    request) and keeps what is received past this one.
    """
    scanned = 0
    while True:
        # Blank lines before a request line are to be ignored (RFC 9112 2.2).
        blank = len(buf) - len(buf.lstrip(b"\r\n"))
        if blank:
            del buf[:blank]
            scanned = 0
        match = _HEAD_END.search(buf, scanned)
        if (match.start() if match else len(buf)) > MAX_HEAD:
            raise _HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        if match:
            head = bytes(buf[:match.start()])
            del buf[:match.end()]
            return head
        # Searched already; only a blank line straddling the next data is new.
        scanned = max(len(buf) - 3, 0)
        data = yield conn.recv(65536)
        if not data:
            return None  # closed, maybe mid-request: nobody is left to answer
        buf += data


def _parse(head: bytes) -> _Request:
    """The request in ``head``; _HttpError if it is malformed."""
    # Latin-1 maps every byte to one character, so nothing fails to decode
    # and the bytes of a path survive to unquote_to_bytes().
    lines = [line.rstrip("\r") for line in head.decode("latin-1").split("\n")]
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, version_text = parts
    version = _VERSION.fullmatch(version_text)
    if version is None:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP version")
    if version.group(1) != "1":
        raise _HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # No space before the colon, no folded lines (RFC 9112 5.1, 5.2).
        if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(value):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header")
        name = name.lower()
        value = value.strip(" \t")
        headers[name] = headers[name] + ", " + value if name in headers else value
    http11 = version.group(2) != "0"
    if http11 and "host" not in headers:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "HTTP/1.1 needs a Host header")
    options = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "close" not in options if http11 else "keep-alive" in options
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    if "transfer-encoding" in headers or int(length):
        # GET and HEAD take no body and we do not read one: the connection
        # cannot carry another request after it.
        keep_alive = False
    return _Request(lines[0], method, _url_path(target), headers, keep_alive)


def _url_path(target: str) -> str:
    """The path of a request target (origin or absolute form), still encoded."""
    if target.startswith("/"):
        return target.partition("?")[0]
    url = urlsplit(target)
    if url.scheme.lower() in ("http", "https") and url.netloc:
        return url.path or "/"
    raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request target")


def _segments(path: str) -> List[str]:
    """The file-name segments of URL ``path``; _HttpError if it climbs out."""
    raw = unquote_to_bytes(path)
    if b"\0" in raw:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "NUL in path")
    try:
        # As the OS names files: on POSIX any bytes (surrogateescape), so
        # the links of a listing lead back to their files.
        text = os.fsdecode(raw)
    except UnicodeDecodeError:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "undecodable path") from None
    segments = [s for s in text.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise _HttpError(HTTPStatus.FORBIDDEN, "'..' in path")
    return segments


# ---------------------------------------------------------------------------
# HTTP: replies
# ---------------------------------------------------------------------------

_Headers = List[Tuple[str, str]]


class _Reply(NamedTuple):
    status: int
    headers: _Headers
    body: bytes = b""                 # the whole body, unless ``file`` is set
    file: Optional[BinaryIO] = None   # an open file to send ``size`` bytes of, from ``offset``
    size: int = 0
    offset: int = 0


class _Found(NamedTuple):
    """A regular file an URL path leads to, as a worker thread found it."""
    path: str
    size: int
    mtime: float
    modified: str  # mtime as Last-Modified says it, formatted once per lookup
    ctype: str


# How long a lookup (_Found) is reused before the disk is asked again: a
# busy small file is then served without a worker thread round trip, and a
# change shows within this many seconds.
FOUND_TTL = 1.0

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _page(status: int, headers: _Headers, title: str, body: str) -> _Reply:
    """An HTML page; ``title`` and ``body`` are HTML already."""
    text = "<!DOCTYPE html>\n<title>%s</title>\n<h1>%s</h1>\n%s\n" % (title, title, body)
    return _Reply(status, [("Content-Type", "text/html; charset=utf-8")] + headers,
                  text.encode("utf-8"))


def _error(status: int, detail: str = "", headers: Optional[_Headers] = None) -> _Reply:
    title = "%d %s" % (status, HTTPStatus(status).phrase)
    return _page(status, headers or [], title, "<p>%s</p>" % html.escape(detail, quote=False))


def _content_type(path: str) -> str:
    ctype, encoding = mimetypes.guess_type(path)
    # "x.tar.gz" is (tar, gzip): the bytes on the wire are gzip, not tar.
    if ctype is None or encoding is not None:
        return "application/octet-stream"
    return ctype


def _listing(directory: str, url_path: str) -> _Reply:
    rows = []
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            slash = "/" if entry.is_dir() else ""
            name = os.fsencode(entry.name)
            rows.append('<li><a href="%s%s">%s%s</a></li>' % (
                quote(name), slash, html.escape(name.decode("utf-8", "replace")), slash))
    title = "Index of %s" % html.escape(unquote(url_path, errors="replace"))
    return _page(HTTPStatus.OK, [], title, "<ul>\n%s\n</ul>" % "\n".join(rows))


def _file_reply(request: _Request, found: _Found, file: BinaryIO) -> _Reply:
    """The reply for ``found``, open as ``file``: 200, 304, 206 or 416."""
    modified = found.modified
    headers = [("Content-Type", found.ctype), ("Last-Modified", modified),
               ("Accept-Ranges", "bytes")]
    since = _http_date(request.headers.get("if-modified-since"))
    if since is not None and int(found.mtime) <= since:
        file.close()
        return _Reply(HTTPStatus.NOT_MODIFIED, headers)
    wanted = _RANGE.fullmatch(request.headers.get("range", "").replace(" ", ""))
    if wanted is None or request.headers.get("if-range", modified) != modified:
        return _Reply(HTTPStatus.OK, headers, file=file, size=found.size)
    first, last = wanted.groups()
    if first:
        start = int(first)
        end = min(int(last), found.size - 1) if last else found.size - 1
    elif last:  # the last N bytes
        start, end = max(found.size - int(last), 0), found.size - 1
    else:
        return _Reply(HTTPStatus.OK, headers, file=file, size=found.size)
    if start > end or start >= found.size:
        file.close()
        return _error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "",
                      [("Content-Range", "bytes */%d" % found.size)])
    headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, found.size)))
    return _Reply(HTTPStatus.PARTIAL_CONTENT, headers, file=file, size=end - start + 1,
                  offset=start)


_date: Tuple[int, str] = (-1, "")  # a second, and the Date header value for it


def _date_now() -> str:
    """Now as the Date header says it: formatted once a second, not per response."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def _http_date(text: Optional[str]) -> Optional[int]:
    """An HTTP date as a POSIX time, or None if absent or malformed."""
    if not text:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class StaticFiles:
    """Handler: serve the files under ``directory`` over HTTP (GET and HEAD).

    ``timeout`` bounds, in seconds, how long a client may take to send a
    request head and to take each chunk of a response. Regular files go out
    with ``sendfile``; ``Range`` (one range) and ``If-Modified-Since`` are
    honoured. Each response is logged on the ``bluelet.http`` logger once it
    has been sent, with the bytes really sent, unless ``access_log`` is false.
    """

    def __init__(self, directory: str, timeout: float = 15.0, access_log: bool = True) -> None:
        self.root = os.path.realpath(directory)
        self.timeout = timeout
        self.access_log = access_log
        self._found: Dict[str, Tuple[float, _Found]] = {}  # URL path -> (until, lookup)
        # Now, not lazily in a worker thread: init() is not thread-safe.
        mimetypes.init()

    def __call__(self, conn: bluelet.Connection) -> _Coroutine:
        buf = bytearray()
        for count in range(1, MAX_REQUESTS + 1):
            request: Optional[_Request] = None
            try:
                head = yield bluelet.timeout(self.timeout, _read_head(conn, buf))
                if head is None:
                    return
                request = _parse(head)
                reply = yield self._reply(request)
                keep_alive = request.keep_alive and count < MAX_REQUESTS
            except bluelet.Timeout:
                return  # idle: close quietly (a 408 could cross a new request)
            except _HttpError as error:
                reply, keep_alive = _error(error.status, error.detail), False
            yield self._send(conn, request, reply, keep_alive)
            if not keep_alive:
                yield self._linger(conn)
                return

    def _reply(self, request: _Request) -> _Coroutine:
        if request.method not in ("GET", "HEAD"):
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, "", [("Allow", "GET, HEAD")])
        now = time.monotonic()
        until, found = self._found.get(request.path, (0.0, None))
        if found is None or until < now:
            segments = _segments(request.path)
            located = yield bluelet.to_thread(self._locate, request.path, segments)
            if isinstance(located, _Reply):
                return located
            found = located
            if len(self._found) > 4096:
                self._found.clear()  # bounded: a crawler cannot grow it without end
            self._found[request.path] = (now + FOUND_TTL, found)
        try:
            # Looked up within FOUND_TTL: its inode is cached, so opening
            # it here does not wait for the disk.
            # Unbuffered: sendfile reads the file, Python never does.
            file = open(found.path, "rb", buffering=0)
        except OSError:
            self._found.pop(request.path, None)
            return _error(HTTPStatus.NOT_FOUND)
        return _file_reply(request, found, file)

    def _inside(self, path: str) -> Optional[str]:
        """The real ``path`` if it is inside the served directory, else None."""
        real = os.path.realpath(path)
        if real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep):
            return real
        return None

    def _locate(self, url_path: str, segments: List[str]) -> Union[_Reply, _Found]:
        """Runs in a worker thread: every call here may wait for the disk."""
        path = self._inside(os.path.join(self.root, *segments))
        if path is None:
            return _error(HTTPStatus.FORBIDDEN, "outside the served directory")
        try:
            if os.path.isdir(path):
                if not url_path.endswith("/"):
                    # Relative links in the page must resolve inside it.
                    return _error(HTTPStatus.MOVED_PERMANENTLY, "", [("Location", url_path + "/")])
                index = self._inside(os.path.join(path, "index.html"))
                if index is None or not os.path.isfile(index):
                    return _listing(path, url_path)
                path = index
            # Only regular files: opening a FIFO would block, a device never end.
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                return _error(HTTPStatus.NOT_FOUND)
            os.close(os.open(path, os.O_RDONLY))  # readable: else 403 here, not later
        except PermissionError:
            return _error(HTTPStatus.FORBIDDEN)
        except OSError:
            return _error(HTTPStatus.NOT_FOUND)
        return _Found(path, info.st_size, info.st_mtime,
                      email.utils.formatdate(info.st_mtime, usegmt=True), _content_type(path))

    def _send(self, conn: bluelet.Connection, request: Optional[_Request], reply: _Reply,
              keep_alive: bool) -> _Coroutine:
        size = reply.size if reply.file is not None else len(reply.body)
        lines = ["HTTP/1.1 %d %s" % (reply.status, HTTPStatus(reply.status).phrase),
                 "Date: " + _date_now(),
                 "Server: " + SERVER,
                 "Connection: " + ("keep-alive" if keep_alive else "close")]
        if reply.status != HTTPStatus.NOT_MODIFIED:
            lines.append("Content-Length: %d" % size)
        lines += ["%s: %s" % header for header in reply.headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sent = 0
        try:
            if request is not None and request.method == "HEAD" or \
                    reply.status == HTTPStatus.NOT_MODIFIED:
                yield bluelet.timeout(self.timeout, conn.sendall(head))
            elif reply.file is None:
                yield bluelet.timeout(self.timeout, conn.sendall(head + reply.body))
                sent = size
            else:
                yield bluelet.timeout(self.timeout, conn.sendall(head))
                sent = yield from self._send_file(conn, reply)
        finally:
            if reply.file is not None:
                reply.file.close()
            # After the body, with what really went out (a cut transfer shows).
            if self.access_log:
                access_log.info('%s "%s" %d %d', conn.addr[0] if conn.addr else "-",
                                request.line if request else "-", reply.status, sent)

    def _send_file(self, conn: bluelet.Connection, reply: _Reply) -> Generator[Any, Any, int]:
        """Send ``reply.size`` bytes of its file with sendfile, a chunk per timeout."""
        assert reply.file is not None
        sent = 0
        while sent < reply.size:
            done = yield conn.sendfile(reply.file, reply.offset + sent,
                                       min(CHUNK, reply.size - sent), timeout=self.timeout)
            if not done:
                # Content-Length is promised: only closing can tell the client.
                raise OSError("%s shrank while being sent" % reply.file.name)
            sent += done
        return sent

    def _linger(self, conn: bluelet.Connection) -> _Coroutine:
        """Close gracefully: FIN first, then drain what the client still sends.

        Closing with unread data (a request body, a pipelined request) makes
        the kernel send RST, which can destroy the response still in flight.
        """
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            yield bluelet.timeout(2, _drain(conn, 16))
        except OSError:
            pass  # reset, gone, or still sending after 2 s: close anyway


def _drain(conn: bluelet.Connection, reads: int) -> _Coroutine:
    for _ in range(reads):
        if not (yield conn.recv(65536)):
            return
