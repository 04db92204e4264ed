"""Interactive 3D viewer (`vq3d view`): a local web page over one Stage-1 model (+ Stage 2).

    from vq3d.viewer import make_server
    server = make_server("runs/demo/stage1")      # 127.0.0.1, a free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.url)

`engine` holds the models (reconstruct, sample, render frames, downloads), `sessions` the
scene of each browser tab, `server` the HTTP API and the page (`static/index.html`).
"""

from vq3d.viewer.engine import RENDER_MODES, ViewerEngine, ViewerError, ViewerOptions
from vq3d.viewer.server import ViewerServer, make_server, serve
from vq3d.viewer.sessions import SessionStore

__all__ = ["RENDER_MODES", "SessionStore", "ViewerEngine", "ViewerError", "ViewerOptions", "ViewerServer",
           "make_server", "serve"]
