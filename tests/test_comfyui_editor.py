"""The ComfyUI stand-in serves the real editor (comfyui-frontend-package) and answers its calls like ComfyUI 0.3.64.

Ground truth: ``frontend_boot.json``, what the editor asked a fresh real ComfyUI 0.3.64 for as it opened
(13 API calls with status, content type and the small bodies; its static files, all 200 but three).
The browser itself is driven in tests/test_editor_browser.py.
"""

from __future__ import annotations

import json
import os

import pytest
import requests
from conftest import IN_CI

from autopod.sim.comfyui import editor
from autopod.sim.comfyui_standin import DATA_DIR, ComfyUIStandin

BOOT = json.loads((DATA_DIR / "frontend_boot.json").read_text())
STATIC = editor.static_root()


def require_editor():
    if STATIC is None:
        reason = f"the editor is not installed (pip install '{editor.PACKAGE}=={editor.VERSION}', part of [test])"
        if IN_CI:
            pytest.fail(reason + " (CI=true: these tests must run)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    require_editor()
    with ComfyUIStandin(root=tmp_path_factory.mktemp("comfyui")) as s:
        yield s


def test_the_pinned_editor_is_installed():
    require_editor()
    assert editor.installed_version() == editor.VERSION == "1.27.10"


def test_root_is_the_editors_index_with_no_cache_headers(ui):
    r = requests.get(ui.url + "/", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/html"
    assert r.content == (STATIC / "index.html").read_bytes()
    assert b"<title>ComfyUI</title>" in r.content
    assert (r.headers["Cache-Control"], r.headers["Pragma"], r.headers["Expires"]) == ("no-cache", "no-cache", "0")


@pytest.mark.parametrize("name,ctype,cache", [
    ("scripts/app.js", "application/javascript", "no-cache"),
    ("materialdesignicons.min.css", "text/css", "no-cache"),
    ("assets/images/comfy-logo-mono.svg", "image/svg+xml", None),
    ("assets/images/favicon_progress_16x16/frame_9.png", "image/png", "public, max-age=86400"),
    ("fonts/materialdesignicons-webfont.woff2", "application/octet-stream", None),
])
def test_static_files_with_comfyuis_types_and_cache_headers(ui, name, ctype, cache):
    r = requests.get(f"{ui.url}/{name}", timeout=5)
    assert r.status_code == 200, name
    assert r.content == (STATIC / name).read_bytes()
    assert r.headers["Content-Type"] == ctype
    assert r.headers.get("Cache-Control") == cache
    # a browser revalidating its copy gets 304 without the body
    again = requests.get(f"{ui.url}/{name}", headers={"If-None-Match": r.headers["ETag"]}, timeout=5)
    assert (again.status_code, again.content) == (304, b"")


def test_every_file_of_an_import_map_module_and_a_json_manifest(ui):
    manifest = next((STATIC / "assets").glob("manifest-*.json"))
    r = requests.get(f"{ui.url}/assets/{manifest.name}", timeout=5)
    assert (r.status_code, r.headers["Content-Type"], r.headers.get("Cache-Control")) == (200, "application/json", None)
    mjs = STATIC / "assets/lib/primevue/button/index.mjs"
    r = requests.get(f"{ui.url}/assets/lib/primevue/button/index.mjs", timeout=5)
    assert (r.status_code, r.headers["Content-Type"]) == (200, "application/javascript")  # a module script needs it
    assert r.content == mjs.read_bytes()


def test_missing_files_folders_and_paths_that_leave_the_folder(ui, tmp_path):
    # what a fresh install lacks (the recording's three 404s): empty body, octet-stream
    for path in [f["path"] for f in BOOT["static_files"]["not_200"] if not f["path"].startswith("/api/")]:
        r = requests.get(ui.url + path, timeout=5)
        assert (r.status_code, r.content, r.headers["Content-Type"]) == (404, b"", "application/octet-stream"), path
    assert requests.get(ui.url + "/assets/nope.png", timeout=5).headers["Cache-Control"] == "public, max-age=3600"
    assert requests.get(ui.url + "/assets", timeout=5).status_code == 403  # a folder is not listed
    # dot segments (raw or encoded) never climb above the editor's folder: /../x is /x
    secret = STATIC.parent / "__init__.py"
    for raw in ("/../__init__.py", "/assets/%2e%2e/%2e%2e/__init__.py", "/..%2f__init__.py",
                "/%2e%2e/%2e%2e/etc/passwd"):
        r = _raw_get(ui.port, raw)
        assert r.startswith(b"HTTP/1.1 404") and secret.read_bytes() not in r, raw
    r = _raw_get(ui.port, "/assets/../index.html")  # a dot segment inside the folder is fine
    assert r.startswith(b"HTTP/1.1 200") and b"<title>ComfyUI</title>" in r


def test_a_symlink_out_of_the_folder_is_not_followed(tmp_path):
    root = tmp_path / "static"
    root.mkdir()
    (root / "index.html").write_text("<title>x</title>")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", root / "leak.txt")
    assert editor.resolve(root, "/leak.txt") == ("outside", None)
    assert editor.resolve(root, "/index.html") == ("file", root / "index.html")
    assert editor.resolve(root, "/nothing.js") == ("missing", None)


def _raw_get(port: int, path: str) -> bytes:
    """A request line sent as it is (requests and browsers remove dot segments before sending)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("call", [c for c in BOOT["api_calls"] if c["path"] != "/"], ids=lambda c: c["path"])
def test_boot_calls_answer_as_the_recorded_fresh_server(call, tmp_path):
    with ComfyUIStandin(root=tmp_path / "comfyui") as s:
        r = requests.get(s.url + call["path"], timeout=5)
    assert r.status_code == call["status"]
    assert (r.headers.get("Content-Type") or "").split(";")[0] == (call["mime"] or "")
    body = call.get("body")
    if call["status"] != 200 or body is None or body.startswith("<"):
        return
    want = json.loads(body)
    if call["path"] == "/api/system_stats":  # the host's numbers differ; the versions do not
        assert {k: r.json()["system"][k] for k in ("comfyui_version", "required_frontend_version")} == {
            k: want["system"][k] for k in ("comfyui_version", "required_frontend_version")}
    elif call["path"] == "/api/experiment/models":  # the same folders, under the stand-in's root
        got = r.json()
        assert [f["name"] for f in got] == [f["name"] for f in want]
        assert [[p.replace(str(tmp_path / "comfyui"), "/tmp/comfy-ref/src") for p in f["folders"]]
                for f in got] == [f["folders"] for f in want]
    else:
        assert r.json() == want


def test_extensions_listed_are_the_editors_files(ui):
    listed = requests.get(ui.url + "/api/extensions", timeout=5).json()
    on_disk = sorted("/" + p.relative_to(STATIC).as_posix() for p in (STATIC / "extensions").rglob("*.js"))
    assert sorted(listed) == on_disk
    r = requests.get(ui.url + listed[0], timeout=5)
    assert (r.status_code, r.headers["Content-Type"]) == (200, "application/javascript")


def test_settings_and_user_files_are_kept_like_comfyui(tmp_path):
    root = tmp_path / "comfyui"
    with ComfyUIStandin(root=root) as s:
        u = s.url + "/api"
        assert requests.post(u + "/settings/Comfy.ColorPalette", json="light", timeout=5).status_code == 200
        assert requests.post(u + "/settings", json={"Comfy.Locale": "fr", "A.B": [1, 2]}, timeout=5).status_code == 200
        assert requests.get(u + "/settings/Comfy.ColorPalette", timeout=5).json() == "light"
        assert requests.get(u + "/settings/Not.Set", timeout=5).json() is None
        # the editor saves a workflow: 200 with its file info; again without overwrite: 409
        wf = b'{"nodes": [], "links": []}'
        r = requests.post(u + "/userdata/workflows%2Fmy%20flow.json?overwrite=false&full_info=true", data=wf, timeout=5)
        assert r.status_code == 200 and r.json()["path"] == "workflows/my flow.json" and r.json()["size"] == len(wf)
        r = requests.post(u + "/userdata/workflows%2Fmy%20flow.json?overwrite=false", data=b"x", timeout=5)
        assert (r.status_code, r.text) == (409, "File already exists")
        assert requests.get(u + "/userdata?dir=workflows&recurse=true&split=false&full_info=true",
                            timeout=5).json()[0]["path"] == "my flow.json"
        assert requests.get(u + "/userdata?dir=workflows&split=true", timeout=5).json() == [
            ["my flow.json", "my flow.json"]]
        assert requests.get(u + "/userdata/workflows%2Fmy%20flow.json", timeout=5).content == wf
        r = requests.post(u + "/userdata/workflows%2Fmy%20flow.json/move/workflows%2Frenamed.json", timeout=5)
        assert r.status_code == 200 and r.json() == "workflows/renamed.json"
        assert requests.delete(u + "/userdata/workflows%2Frenamed.json", timeout=5).status_code == 204
        assert requests.get(u + "/userdata/workflows%2Frenamed.json", timeout=5).status_code == 404
        # nothing leaves user/default/
        for bad in ("..%2F..%2Foutside.json", "%2Fetc%2Fpasswd", "..%2Fother-user%2Fx"):
            assert requests.post(u + "/userdata/" + bad, data=b"x", timeout=5).status_code == 403, bad
            assert requests.get(u + "/userdata/" + bad, timeout=5).status_code == 403, bad
        assert requests.get(u + "/userdata?dir=..%2F..", timeout=5).status_code == 403
        assert requests.get(u + "/userdata", timeout=5).status_code == 400
        assert not (tmp_path / "outside.json").exists()
    saved = json.loads((root / "user" / "default" / "comfy.settings.json").read_text())
    assert saved["Comfy.ColorPalette"] == "light" and saved["Comfy.Locale"] == "fr"
    with ComfyUIStandin(root=root) as s:  # a restarted pod keeps them
        assert requests.get(s.url + "/api/settings", timeout=5).json() == saved


def test_the_editors_panels_get_answers(ui):
    """The model library, the logs panel and the file lists ask for these after the editor has opened."""
    u = ui.url
    paths = requests.get(u + "/internal/folder_paths", timeout=5).json()
    assert paths["checkpoints"] == [str(ui.root / "models" / "checkpoints"), str(ui.root / "output" / "checkpoints")]
    assert requests.get(u + "/api/experiment/models/checkpoints", timeout=5).json() == []
    assert requests.get(u + "/api/experiment/models/nope", timeout=5).status_code == 404
    assert requests.get(u + "/internal/logs", timeout=5).json() == ""
    assert requests.get(u + "/internal/logs/raw", timeout=5).json()["entries"] == []
    assert requests.patch(u + "/internal/logs/subscribe", json={"enabled": True, "clientId": "x"},
                          timeout=5).status_code == 200
    assert "example.png" in requests.get(u + "/internal/files/input", timeout=5).json()
    assert requests.get(u + "/internal/files/elsewhere", timeout=5).status_code == 400
    assert requests.get(u + "/api/workflow_templates", timeout=5).json() == {}


def test_requests_from_another_web_page_are_refused(ui):
    """ComfyUI's guard: a page on another site cannot make the browser queue prompts on a loopback ComfyUI."""
    host = f"127.0.0.1:{ui.port}"
    prompt = {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                       "color": 0}}}}
    r = requests.post(ui.url + "/api/prompt", json=prompt, headers={"Origin": "http://evil.example"}, timeout=5)
    assert r.status_code == 403
    r = requests.post(ui.url + "/api/settings/X", json=1, headers={"Origin": "http://localhost:1"}, timeout=5)
    assert r.status_code == 403
    assert requests.get(ui.url + "/api/settings/X", timeout=5).json() is None  # nothing was written
    ok = requests.post(ui.url + "/api/settings/X", json=1, headers={"Origin": f"http://{host}"}, timeout=5)
    assert ok.status_code == 200


def test_without_the_editor_the_url_says_how_to_get_it(tmp_path):
    with ComfyUIStandin(root=tmp_path / "c", editor_ui=False) as s:
        r = requests.get(s.url + "/", timeout=5)
        assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert f"pip install '{editor.PACKAGE}==1.27.10'" in r.text and "pip install -e '.[editor]'" in r.text
        r = requests.get(s.url + "/scripts/app.js", timeout=5)
        assert (r.status_code, r.content) == (404, b"")
        assert requests.get(s.url + "/system_stats", timeout=5).status_code == 200


def test_static_root_is_none_without_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert editor.static_root() is None
