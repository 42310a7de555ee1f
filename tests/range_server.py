"""A static HTTP server with ``Range: bytes=a-b`` support, run as a separate process by the tests.

GDAL holds the GIL while rasterio opens a URL, so a server thread in the test process would never
answer; Python's own handler ignores Range. Usage: ``python range_server.py FOLDER LOG``; prints the
port, then serves FOLDER on 127.0.0.1 and appends every Range header to LOG.
"""

from __future__ import annotations

import functools
import http.server
import re
import sys
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    log_path: Path

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, with_body: bool) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            with open(self.log_path, "a") as fh:
                fh.write(self.headers["Range"] + "\n")
            start, end = int(m[1]), min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)


if __name__ == "__main__":
    RangeHandler.log_path = Path(sys.argv[2])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(RangeHandler, directory=sys.argv[1]))
    print(server.server_address[1], flush=True)
    server.serve_forever()
