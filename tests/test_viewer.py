"""The interactive viewer (`vq3d view`): its HTTP API against a server started in a thread, and
the page in a real headless browser (Debian's chromium driven by Playwright; skipped with the
reason when either is missing)."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import trimesh
import torch
from PIL import Image

from vq3d.config import load_config
from vq3d.data.decode import load_crop
from vq3d.data.tokens import stage1_codebook_hash
from vq3d.models.stage1 import Stage1Model
from vq3d.render.cameras import disc_offsets_to_cameras
from vq3d.train.checkpoint import save_checkpoint
from vq3d.train.runs import load_stage1, prepare_run
from vq3d.train.stage2 import build_gpt
from vq3d.utils.images import colorize, to_uint8, to_unit
from vq3d.utils.io import atomic_write_json
from vq3d.viewer import ViewerOptions, make_server
from vq3d.viewer.sessions import SessionStore, UnknownSession

torch.set_num_threads(1)

SIZE, REFINE = 16, 32  # interactive and refine frame sizes of the test server
MAX_UPLOAD = 200_000
CLASSES = ["sphere", "box", "torus"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Stage-1 run and a Stage-2 run on its codebook, written by the project's own run
    and checkpoint writers with random weights (a trained model is not needed to test the viewer;
    the decoder's head is scaled up so that different views differ clearly)."""
    root = tmp_path_factory.mktemp("viewer")
    run1, run2 = root / "s1", root / "s2"
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = Stage1Model(cfg)
    with torch.no_grad():
        model.decoder.head.weight.mul_(20.0)
        model.decoder.head.bias.normal_(0.0, 1.0)
    prepare_run(run1, cfg, resume=False)
    save_checkpoint(run1, 1, {"model": model}, rng=False)
    info = {"codebook_size": cfg.model.codebook_size, "seq_len": model.grid**2, "num_classes": len(CLASSES)}
    prepare_run(run2, cfg, resume=False)
    atomic_write_json(run2 / "stage2.json", {**info, "class_names": CLASSES, "stage1_run": str(run1),
                                             "codebook_hash": stage1_codebook_hash(run1)})
    save_checkpoint(run2, 1, {"gpt": build_gpt(cfg, info)}, rng=False)
    return run1, run2


def _start(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def _stop(server) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(runs):
    options = ViewerOptions(interactive_size=SIZE, refine_size=REFINE, video_frames=3, video_fps=5,
                            mesh_resolution=12, max_upload_bytes=MAX_UPLOAD, max_sessions=6)
    srv = _start(make_server(runs[0], runs[1], port=0, options=options))
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def stage1(runs):
    model, _ = load_stage1(runs[0])
    return model


def _request(url: str, data: bytes | None = None) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def _session(server) -> str:
    status, body, _ = _request(server.url + "api/session", b"")
    assert status == 200
    return json.loads(body)["session"]


def _png(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    """A structured test photo: a coloured disc on a gradient, different for every seed."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, 3) * (xx / w)[..., None] + rng.uniform(0, 255, 3) * (yy / h)[..., None]
    disc = (xx - rng.uniform(0.3, 0.7) * w) ** 2 + (yy - h / 2) ** 2 < (h / 3) ** 2
    base[disc] = rng.uniform(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _upload(server, session: str, data: bytes, name: str = "photo.png") -> tuple[int, dict]:
    status, body, _ = _request(server.url + f"api/upload?session={session}&name={name}", data)
    return status, json.loads(body)


def _frame(server, session: str, dx: float = 0.0, dy: float = 0.0, mode: str = "rgb",
           size: int = SIZE) -> np.ndarray:
    status, body, headers = _request(server.url + f"api/frame?session={session}&dx={dx}&dy={dy}&mode={mode}"
                                     f"&size={size}")
    assert status == 200, body
    assert headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(np.int16)


def _reference(model, data: bytes, dx: float, dy: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB and colorized-disparity frames of `data` straight from Stage1Model.reconstruct."""
    crop = load_crop(data, model.resolution)
    images = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    r = model.cfg.render
    cams = disc_offsets_to_cameras(torch.tensor([[dx, dy]]), r.camera_distance, r.fov_deg)
    with torch.no_grad():
        scene = model.decode_codes(model.quantize(images).codes)
        out = model.render(scene, cams, size, size)
    return (to_uint8(to_unit(out.rgb[0])).astype(np.int16),
            to_uint8(colorize(out.disparity[:1])[0]).astype(np.int16))


# ----------------------------------------------------------------------------- HTTP API


def test_page_and_info_are_served(server):
    status, body, headers = _request(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<title>vq3d viewer</title>" in body and b"/api/frame" in body
    info = json.loads(_request(server.url + "api/info")[1])
    assert info["interactive_size"] == SIZE and info["refine_size"] == REFINE
    assert info["can_sample"] and info["classes"] == CLASSES
    assert info["max_offset"] > info["sampling_radius"] > 0  # the camera can leave the training disc
    assert server.server_address[0] == "127.0.0.1"


def test_uploaded_image_renders_as_its_direct_reconstruction(server, stage1):
    session = _session(server)
    data = _png(1, mode="RGBA")  # alpha is composited on white, as in the datasets
    status, result = _upload(server, session, data)
    assert status == 200 and result["source"] == "upload photo.png"
    for dx, dy, size in [(0.0, 0.0, SIZE), (0.25, -0.1, REFINE)]:
        rgb, depth = _reference(stage1, data, dx, dy, size)
        assert np.abs(_frame(server, session, dx, dy, "rgb", size) - rgb).max() <= 1
        assert np.abs(_frame(server, session, dx, dy, "depth", size) - depth).max() <= 1
    status, body, _ = _request(server.url + f"api/input?session={session}")
    assert status == 200
    crop = np.asarray(Image.open(io.BytesIO(body)))
    assert crop.shape == (stage1.resolution, stage1.resolution, 3)


def test_camera_moves_change_the_frame_and_modes_differ(server):
    session = _session(server)
    _upload(server, session, _png(2))
    centre = _frame(server, session)
    moved = _frame(server, session, 0.3, 0.1)
    assert np.abs(centre - moved).mean() > 1.0
    depth = _frame(server, session, mode="depth")
    assert np.abs(centre - depth).mean() > 10.0
    side = _frame(server, session, mode="side", size=REFINE)
    assert side.shape == (REFINE, 2 * REFINE, 3)
    assert np.array_equal(side[:, :REFINE], _frame(server, session, size=REFINE))
    assert np.array_equal(side[:, REFINE:], _frame(server, session, mode="depth", size=REFINE))
    # offsets beyond the viewer's reach are clamped to it, not refused
    reach = json.loads(_request(server.url + "api/info")[1])["max_offset"]
    assert np.array_equal(_frame(server, session, 50.0, -50.0), _frame(server, session, reach, -reach))


def test_bad_uploads_are_refused_with_a_message_and_the_server_keeps_serving(server):
    session = _session(server)
    assert _upload(server, session, _png(3))[0] == 200
    before = _frame(server, session)
    status, body = _upload(server, session, b"\x89PNG" + bytes(MAX_UPLOAD))
    assert status == 413 and "too large" in body["error"] and "limit" in body["error"]
    status, body = _upload(server, session, b"%PDF-1.4 this is not an image", "notes.pdf")
    assert status == 415 and "not an image" in body["error"]
    status, body = _upload(server, session, _png(4)[:60], "cut.png")
    assert status == 400 and ("truncated" in body["error"] or "corrupt" in body["error"])
    status, body = _upload(server, session, b"")
    assert status == 400 and "empty" in body["error"]
    assert np.array_equal(_frame(server, session), before)  # the scene is still the last good one


def test_bad_frame_requests_get_clear_errors(server):
    session = _session(server)
    status, body, _ = _request(server.url + f"api/frame?session={session}")
    assert status == 409 and "upload an image" in json.loads(body)["error"]
    _upload(server, session, _png(5))
    for query, status_expected, words in [
        ("mode=xray", 400, "unknown mode"), (f"size={REFINE + 1}", 400, "frame size"),
        ("dx=nan", 400, "finite"), ("dx=left", 400, "dx"),
    ]:
        status, body, _ = _request(server.url + f"api/frame?session={session}&{query}")
        assert status == status_expected and words in json.loads(body)["error"], query
    status, body, _ = _request(server.url + "api/frame?session=not-a-session-id")
    assert status == 404 and "reload" in json.loads(body)["error"]
    assert _request(server.url + "api/nothing")[0] == 404


def test_concurrent_sessions_keep_their_own_scenes(server, stage1):
    photos = [_png(10), _png(11)]
    sessions = [_session(server), _session(server)]
    expected = []
    for session, data in zip(sessions, photos):
        assert _upload(server, session, data)[0] == 200
        expected.append(_reference(stage1, data, 0.2, 0.0, SIZE)[0])
    assert np.abs(expected[0] - expected[1]).mean() > 1.0  # the two scenes look different
    errors: list[str] = []

    def hammer(k: int) -> None:
        for i in range(6):
            if i == 3:  # re-upload mid-way: the other session must not see it
                assert _upload(server, sessions[k], photos[k])[0] == 200
            frame = _frame(server, sessions[k], 0.2, 0.0)
            if np.abs(frame - expected[k]).max() > 1:
                errors.append(f"session {k} request {i} got another scene")

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_sessions_are_bounded_least_recently_used_first(server):
    store = SessionStore(max_sessions=2)
    a, b = store.create(), store.create()
    store.get(a.id)  # a is now more recent than b
    c = store.create()
    assert len(store) == 2 and store.get(a.id) is a and store.get(c.id) is c
    with pytest.raises(UnknownSession):
        store.get(b.id)
    # the server's store: opening max_sessions newer tabs drops an old one
    old = _session(server)
    _upload(server, old, _png(6))
    for _ in range(server.sessions.max_sessions):
        _session(server)
    status, body, _ = _request(server.url + f"api/frame?session={old}")
    assert status == 404 and "expired" in json.loads(body)["error"]


def test_sampling_by_class_is_reproducible_and_needs_stage2(server, runs):
    session = _session(server)
    url = server.url + f"api/sample?session={session}"
    status, body, _ = _request(url + "&class=box&seed=3", b"")
    assert status == 200 and json.loads(body)["source"] == "class box, seed 3"
    first = _frame(server, session, size=REFINE)
    _request(url + "&class=box&seed=4", b"")
    other = _frame(server, session, size=REFINE)
    _request(url + "&class=box&seed=3", b"")
    assert np.array_equal(_frame(server, session, size=REFINE), first)
    assert not np.array_equal(other, first)
    status, body, _ = _request(url + "&class=dodecahedron", b"")
    assert status == 400 and "sphere" in json.loads(body)["error"]  # lists the classes
    status, body, _ = _request(server.url + f"api/input?session={session}")
    assert status == 404  # a sampled scene has no input image
    lone = _start(make_server(runs[0], port=0, options=ViewerOptions(interactive_size=SIZE)))
    try:
        assert not json.loads(_request(lone.url + "api/info")[1])["can_sample"]
        status, body, _ = _request(lone.url + f"api/sample?session={_session(lone)}&class=box", b"")
        assert status == 400 and "--stage2" in json.loads(body)["error"]
    finally:
        _stop(lone)


def _ply_counts(blob: bytes) -> dict[str, int]:
    header = blob[: blob.index(b"end_header")].decode().splitlines()
    return {line.split()[1]: int(line.split()[2]) for line in header if line.startswith("element")}


def test_downloads_are_valid_files(server):
    session = _session(server)
    _upload(server, session, _png(7))

    def export(kind: str) -> tuple[int, bytes, dict]:
        return _request(server.url + f"api/export?session={session}&kind={kind}&dx=0.1&dy=0.05")

    status, mp4, headers = export("mp4")
    assert status == 200 and mp4[4:8] == b"ftyp" and "orbit.mp4" in headers["Content-Disposition"]
    status, gif, _ = export("gif")
    assert status == 200 and gif[:6] == b"GIF89a"
    gif_image = Image.open(io.BytesIO(gif))
    assert gif_image.n_frames == 3 and gif_image.size == (REFINE, REFINE)
    status, points, _ = export("points.ply")
    assert status == 200 and 0 <= _ply_counts(points)["vertex"] <= REFINE * REFINE
    status, mesh_ply, _ = export("mesh.ply")
    status_obj, mesh_obj, _ = export("mesh.obj")
    assert status == status_obj == 200
    counts = _ply_counts(mesh_ply)
    lines = mesh_obj.decode().splitlines()
    assert counts["vertex"] == sum(line.startswith("v ") for line in lines)
    assert counts["face"] == sum(line.startswith("f ") for line in lines)
    status, mesh_glb, headers = export("mesh.glb")
    assert status == 200 and mesh_glb[:4] == b"glTF" and "mesh.glb" in headers["Content-Disposition"]
    glb = trimesh.load(io.BytesIO(mesh_glb), file_type="glb", process=False, force="mesh")
    assert (len(glb.vertices), len(glb.faces)) == (counts["vertex"], counts["face"])
    status, body, _ = export("stl")
    assert status == 400 and "mesh.obj" in json.loads(body)["error"]


def test_cli_refuses_a_missing_run(tmp_path, capsys):
    from vq3d.cli import main

    assert main(["view", "--stage1", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_bench_viewer_prints_one_json_object(capsys):
    from vq3d.bench.viewer import TARGET_FPS, main

    assert main(["--json", "--preset", "tiny", "--size", "8", "--refine-size", "16", "--frames", "3",
                 "--refine-frames", "1", "--repeats", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["interactive_size"] == 8 and report["refine_size"] == 16
    assert report["fps"] > 0 and report["refine_fps"] > 0
    assert report["fps_over_target"] == pytest.approx(report["fps"] / TARGET_FPS)


# ----------------------------------------------------------------------------- the page in a browser


_PIXELS_JS = """() => {
  const img = document.getElementById('view');
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  return {w: canvas.width, h: canvas.height, data: Array.from(pixels)};
}"""


def _shown(page) -> np.ndarray:
    """The frame the page shows now, (H, W, 3)."""
    px = page.evaluate(_PIXELS_JS)
    return np.array(px["data"], dtype=np.int16).reshape(px["h"], px["w"], 4)[..., :3]


def _settled(page, condition: str = "true") -> None:
    """Wait until the refined frame for the page's current camera and mode is on screen."""
    page.wait_for_function(f"document.getElementById('view').dataset.settled === '1' && ({condition})",
                           timeout=30_000)


def _open(browser, server):
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page


def test_browser_upload_drag_and_depth(browser, server, tmp_path):
    page = _open(browser, server)
    photo, junk = tmp_path / "photo.png", tmp_path / "junk.png"
    photo.write_bytes(_png(20))
    junk.write_bytes(b"definitely not an image")
    page.set_input_files("#file", str(photo))
    _settled(page, "window.vq3d.state.version === 1")
    before = _shown(page)
    assert before.shape == (REFINE, REFINE, 3)
    assert page.inner_text("#source") == "upload photo.png"

    box = page.locator("#view").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.evaluate("window.vq3d.frameSizes.length = 0")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 90, cy + 40, steps=8)
    page.mouse.up()
    _settled(page, "window.vq3d.state.dx !== 0")
    after = _shown(page)
    state = page.evaluate("window.vq3d.state")
    assert state["dx"] < 0 < state["dy"]  # the scene is grabbed: the camera moves against the drag
    assert page.inner_text("#dx-value") == f"{state['dx']:.3f}"
    sizes = page.evaluate("window.vq3d.frameSizes")
    assert sizes[-1] == REFINE and SIZE in sizes  # interactive frames while moving, refined when it stops
    assert np.abs(after - before).mean() > 1.0

    page.check("#mode-depth")
    _settled(page, "window.vq3d.state.mode === 'depth'")
    depth = _shown(page)
    assert np.abs(depth - after).mean() > 10.0

    page.set_input_files("#file", str(junk))
    page.wait_for_selector("#error.shown", timeout=30_000)
    assert "not an image" in page.inner_text("#error")
    assert np.array_equal(_shown(page), depth)  # still showing the last good scene
    page.close()


def test_browser_tabs_keep_their_own_scenes(browser, server, stage1, tmp_path):
    photos = [_png(30), _png(31)]
    pages = []
    for k, data in enumerate(photos):
        path = tmp_path / f"tab{k}.png"
        path.write_bytes(data)
        page = _open(browser, server)
        page.set_input_files("#file", str(path))
        pages.append(page)
    shown = []
    for page in pages:
        _settled(page, "window.vq3d.state.version === 1")
        shown.append(_shown(page))
    for page in pages:  # new frames for both tabs, now that both scenes exist on the server
        page.check("#mode-depth")
    for k, (page, data) in enumerate(zip(pages, photos)):
        _settled(page, "window.vq3d.state.mode === 'depth'")
        rgb, depth = _reference(stage1, data, 0.0, 0.0, REFINE)
        assert np.abs(shown[k] - rgb).max() <= 2
        assert np.abs(_shown(page) - depth).max() <= 2
    assert np.abs(shown[0] - shown[1]).mean() > 1.0
    for page in pages:
        page.close()
