"""A static HTTP server on 127.0.0.1 that answers byte-range requests (as object stores and CDNs do).

``python -m http.server`` ignores ``Range`` headers, which GDAL's ``/vsicurl/`` refuses ("Range downloading
not supported by this server"); this one answers ``Range: bytes=a-b`` with ``206 Partial Content`` and
counts those answers. It runs in a child process, not a thread of the test process: rasterio holds the GIL
while GDAL opens a dataset, so a server thread of the same interpreter could never answer GDAL's first
request (the open deadlocks).
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files of ``directory``; a ``Range: bytes=a-b`` request gets those bytes only."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001 (the base class's signature)
        """A whole-file answer; GDAL reads its headers and drops the connection, which is no error."""
        try:
            super().copyfile(source, outputfile)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        match = RANGE.match(self.headers.get("Range", ""))
        if match is None or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(match[1]) if match[1] else max(len(data) - int(match[2]), 0)
        end = min(int(match[2]) if match[1] and match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_error(416)
            return
        body = data[start:end + 1]
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        with self.server.range_answers.get_lock():  # type: ignore[attr-defined]
            self.server.range_answers.value += 1  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RangeServer:
    """A running server: its base URL and how many range requests it answered so far."""

    url: str
    answers: Synchronized

    @property
    def range_answers(self) -> int:
        return int(self.answers.value)


def _serve(directory: str, port: Synchronized, answers: Synchronized) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=directory))
    server.range_answers = answers  # type: ignore[attr-defined]
    port.value = server.server_address[1]
    server.serve_forever()


@contextmanager
def serve(directory: Path, timeout: float = 30.0) -> Iterator[RangeServer]:
    """Serve ``directory`` on a free port of 127.0.0.1 from a child process, stopped on exit."""
    context = multiprocessing.get_context("spawn")
    port, answers = context.Value("i", 0), context.Value("i", 0)
    process = context.Process(target=_serve, args=(str(directory), port, answers), daemon=True)
    process.start()
    try:
        for _ in range(int(timeout * 20)):
            if port.value or not process.is_alive():
                break
            process.join(0.05)
        if not port.value:
            raise RuntimeError(f"range server for {directory} did not start")
        yield RangeServer(f"http://127.0.0.1:{port.value}", answers)
    finally:
        process.terminate()
        process.join()
