"""The viewer's HTTP side: the standard library's threading server, one page, a small JSON API.

    GET  /                                   the page (static/index.html)
    GET  /api/info                           sizes, camera reach, classes, upload limit
    POST /api/session                        {"session": id} for a new browser tab
    POST /api/upload?session=S&name=N        body: the raw image bytes -> reconstruct it
    POST /api/sample?session=S&class=C&seed=K  sample a new scene with Stage 2
    GET  /api/frame?session=S&dx=&dy=&mode=rgb|depth|side&size=N   PNG frame
    GET  /api/input?session=S                PNG of the centre crop the encoder saw (uploads)
    GET  /api/export?session=S&kind=mp4|gif|points.ply|mesh.ply|mesh.obj|mesh.glb&dx=&dy=&mode=   a download

Errors are JSON {"error": message} with a 4xx status (5xx for bugs, logged); a request never
takes the server down.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from vq3d.errors import UserError
from vq3d.viewer.engine import EXPORT_KINDS, ViewerEngine, ViewerError, ViewerOptions
from vq3d.viewer.sessions import SessionStore, UnknownSession

# Oversize bodies up to this size are read and dropped, so that the client gets to read the 413.
_DRAIN_LIMIT = 256 * 1024 * 1024


def page_html() -> bytes:
    """The viewer page (one self-contained HTML file shipped as package data)."""
    return resources.files("vq3d.viewer").joinpath("static/index.html").read_bytes()


def png_bytes(frame: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (fast compression: frames are small and short-lived)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class ViewerServer(ThreadingHTTPServer):
    """A threading HTTP server holding the engine (models) and the sessions (scenes per tab)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], engine: ViewerEngine, sessions: SessionStore,
                 quiet: bool = True) -> None:
        self.engine, self.sessions, self.quiet = engine, sessions, quiet
        self.page = page_html()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a silent client may hold its connection (socket timeout)
    # Headers and body go out as two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK stall every kept-alive response by ~40 ms.
    disable_nagle_algorithm = True

    # -- plumbing -------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if str(code) == "200" and self.path.startswith("/api/frame"):
            return  # frames come many per second while dragging
        super().log_request(code, size)

    def do_GET(self) -> None:
        self._dispatch({"/": self._page, "/index.html": self._page, "/api/info": self._info,
                        "/api/frame": self._frame, "/api/input": self._input, "/api/export": self._export})

    def do_POST(self) -> None:
        self._dispatch({"/api/session": self._new_session, "/api/upload": self._upload,
                        "/api/sample": self._sample})

    def _dispatch(self, routes: dict) -> None:
        parts = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = routes.get(parts.path)
        try:
            self.body = self._read_body() if self.command == "POST" else b""
            if route is None:
                raise ViewerError(404, f"no such page: {parts.path}")
            route()
        except ViewerError as err:
            self._error(err.status, err.message)
        except UnknownSession:
            self._error(404, "unknown or expired session (the server restarted, or many tabs were opened "
                             "since): reload the page")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the browser went away (e.g. a newer frame replaced this one)
        except Exception as err:  # noqa: BLE001 - a bug must not take the server down
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"internal error ({type(err).__name__}): {err}")

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _json(self, payload: dict, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _param(self, name: str, kind: type = str, default: Any = None) -> Any:
        raw = self.query.get(name)
        if raw is None or raw == "":
            if default is None and kind is not str:
                raise ViewerError(400, f"missing query parameter '{name}'")
            return default
        try:
            return kind(raw)
        except ValueError:
            raise ViewerError(400, f"query parameter '{name}' must be {kind.__name__}, "
                                   f"got '{raw[:40]}'") from None

    def _session(self):
        return self.server.sessions.get(self.query.get("session"))

    def _entry(self):
        entry = self._session().entry
        if entry is None:
            raise ViewerError(409, "no scene yet: upload an image" + (
                " or sample a scene" if self.server.engine.can_sample else ""))
        return entry

    def _read_body(self) -> bytes:
        """The request body, read before anything else so that the connection stays in sync.

        Bodies over the upload limit are read and dropped (when not absurd) and answered with 413.
        """
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise ViewerError(411, "send the upload with a Content-Length")
            return b""
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise ViewerError(400, "bad Content-Length")
        if length > self.server.engine.options.max_upload_bytes:
            if length <= _DRAIN_LIMIT:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            else:
                self.close_connection = True
            self.server.engine.check_upload_size(length)  # raises the 413
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise ViewerError(400, "the upload was cut short")
        return body

    # -- routes ---------------------------------------------------------------------------------

    def _page(self) -> None:
        self._send(200, self.server.page, "text/html; charset=utf-8")

    def _info(self) -> None:
        self._json(self.server.engine.info())

    def _new_session(self) -> None:
        self._json({"session": self.server.sessions.create().id})

    def _upload(self) -> None:
        session = self._session()
        scene, crop = self.server.engine.reconstruct(self.body)
        name = Path(self.query.get("name") or "image").name[:80]
        entry = session.set_scene(scene, f"upload {name}", crop)
        self._json({"version": entry.version, "source": entry.source})

    def _sample(self) -> None:
        session = self._session()
        seed = self._param("seed", int, 0)
        scene, source = self.server.engine.sample_scene(self.query.get("class"), seed)
        entry = session.set_scene(scene, source)
        self._json({"version": entry.version, "source": entry.source})

    def _frame(self) -> None:
        engine = self.server.engine
        entry = self._entry()
        dx, dy = self._param("dx", float, 0.0), self._param("dy", float, 0.0)
        size = self._param("size", int, engine.interactive_size)
        frame = engine.render_frame(entry.scene, dx, dy, self.query.get("mode", "rgb"), size)
        self._send(200, png_bytes(frame), "image/png", {"X-Scene-Version": str(entry.version)})

    def _input(self) -> None:
        entry = self._entry()
        if entry.input_crop is None:
            raise ViewerError(404, "this scene was sampled, not uploaded: it has no input image")
        self._send(200, png_bytes(entry.input_crop), "image/png")

    def _export(self) -> None:
        entry = self._entry()
        kind = self.query.get("kind", "")
        dx, dy = self._param("dx", float, 0.0), self._param("dy", float, 0.0)
        body = self.server.engine.export(entry, kind, dx, dy, self.query.get("mode", "rgb"))
        content_type, filename = EXPORT_KINDS[kind]
        disposition = f'attachment; filename="vq3d_{filename}"'
        self._send(200, body, content_type, {"Content-Disposition": disposition})


def make_server(stage1_run: str | Path | None = None, stage2_run: str | Path | None = None,
                host: str = "127.0.0.1", port: int = 0, options: ViewerOptions | None = None,
                device: str = "cpu", engine: ViewerEngine | None = None, quiet: bool = True) -> ViewerServer:
    """A viewer server bound to (host, port) (port 0: any free port; see `server.url`).

    Give trained runs (`stage1_run`, optional `stage2_run`) or a ready `engine`. Call
    `serve_forever()` (e.g. in a thread) to serve and `shutdown()` + `server_close()` to stop.
    """
    options = options or (engine.options if engine is not None else ViewerOptions())
    if engine is None:
        if stage1_run is None:
            raise UserError("the viewer needs a Stage-1 run: pass --stage1 RUN")
        engine = ViewerEngine.load(stage1_run, stage2_run, options, device)
    try:
        return ViewerServer((host, port), engine, SessionStore(options.max_sessions), quiet=quiet)
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err}): choose another --port "
                        "or --host") from None


def serve(stage1_run: str | Path, stage2_run: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, options: ViewerOptions | None = None, device: str = "cpu",
          open_browser: bool = False) -> None:
    """Run the viewer until Ctrl-C."""
    server = make_server(stage1_run, stage2_run, host, port, options, device, quiet=False)
    print(f"vq3d viewer on {server.url} (Ctrl-C to stop)", file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("warning: the viewer has no authentication; anyone who can reach this address can use it",
              file=sys.stderr)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(server.url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
