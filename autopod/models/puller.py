"""Model downloads inside a pod: the program ``autopod model.pull`` sends over SSH.

It runs on the pod's own Python 3 with the standard library only, so it imports nothing from
autopod (``tests/test_architecture.py`` checks). A pod downloads at data-centre speed and keeps
going while the laptop that asked sleeps; this program is what makes that safe:

- **Resumable.** Bytes go to a hidden ``.part`` file beside the target, named after the job, and a
  later pull of the same URL continues it with an HTTP ``Range`` request (after a killed program, a
  stopped pod or a dropped connection). The URL is resolved again each time: signed CDN URLs expire.
- **Verified.** The sha256 is checked when it is known (asked for, announced by Hugging Face's
  ``X-Linked-Etag``, or by Civitai's model-version API); only a match is renamed into place.
- **Refused before saving:** an HTML page, a size far from the announced one, a file larger than
  the free space, a name with ``/``, ``..`` or control characters.
- **Tokens stay with their host.** The Hugging Face or Civitai token is sent only to the host of the
  URL that was asked for, never to the CDN a redirect points at (``urllib`` would forward it, so
  redirects are followed here by hand). Tokens arrive on standard input and stay in memory: never
  in a process's arguments or environment, never in a file.
- **One download per file per volume.** Each job holds a lock in the volume's
  ``.autopod/models/jobs/<key>/`` folder; a second pull of the same file joins the first.

Where files go: one layout for pods and Serverless endpoints. On the volume a file goes to
``<volume>/models/<worker folder>/`` (``clip`` for text encoders, ``unet`` for diffusion models, the folder's own
name otherwise), which worker-comfyui reads at ``/runpod-volume/models/...``; the pod's ComfyUI (its folders
from ``GET /experiment/models``, else ``/internal/folder_paths``) gets a relative link to it in the folder's first
path, so it lists the file at once, without a restart, and the link resolves under either mount. A file pulled
into ComfyUI's folder before is moved there by the next pull of it. ``HF_ENDPOINT`` (as
``huggingface_hub`` reads it) and ``CIVITAI_ENDPOINT`` in the pod's environment send Hugging Face and
Civitai URLs to a mirror.

Protocol: ``autopod`` starts this program with its source and then one JSON request on standard
input; it answers with JSON lines on standard output, the last one ``{"event": "result", ...}``.
The download itself is a forked child in a session of its own (it outlives the SSH session), so the
tokens never leave this process's memory.
"""

import errno
import hashlib
import http.client
import json
import os
import random
import re
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from email.message import Message

VERSION = 1
CHUNK = 1 << 20
USER_AGENT = "autopod-model-pull/%d (python %d.%d)" % (VERSION, sys.version_info[0], sys.version_info[1])
LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}  # ComfyUI's map_legacy
# worker-comfyui 5.8.5 reads a network volume only at /runpod-volume/models/<name> for these names (its
# extra_model_paths.yaml): ComfyUI folder key -> that name. autopod.models.folders keeps the same table.
WORKER_FOLDERS = {"checkpoints": "checkpoints", "text_encoders": "clip", "clip_vision": "clip_vision",
                  "configs": "configs", "controlnet": "controlnet", "embeddings": "embeddings", "loras": "loras",
                  "upscale_models": "upscale_models", "vae": "vae", "diffusion_models": "unet"}
WORKER_MOUNT = "/runpod-volume"
NOT_MODEL_FOLDERS = ("custom_nodes", "configs")
HF_HOSTS = ("huggingface.co", "hf.co")
CIVITAI_HOSTS = ("civitai.com", "civitai.red")
# Civitai model types -> ComfyUI folders, for a pull without --folder
CIVITAI_FOLDERS = {"checkpoint": "checkpoints", "lora": "loras", "locon": "loras", "dora": "loras",
                   "textualinversion": "embeddings", "hypernetwork": "hypernetworks", "vae": "vae",
                   "controlnet": "controlnet", "upscaler": "upscale_models", "motionmodule": "animatediff_models"}
RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)
HEARTBEAT_S = 1.0
FRESH_S = 15.0  # a job whose heartbeat is older than this is not running (a killed program, another pod gone)
KEEP_JOBS_S = 7 * 86400
LOST_LOCK = 3  # exit code of a download that found another one running the same job


class Fail(Exception):
    """A pull that cannot go on: ``code`` 1 (failed) or 2 (bad input); ``retry`` for a transient cause."""

    def __init__(self, msg, code=1, retry=False, status=None):
        Exception.__init__(self, msg)
        self.msg = msg
        self.code = code
        self.retry = retry
        self.status = status


# --- small helpers ----------------------------------------------------------------------------


def now():
    return time.time()


def emit(doc):
    """One JSON line to autopod; a reader that went away ends only this front process."""
    try:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        raise SystemExit(0)


def write_json(path, doc, mode=0o600):
    tmp = "%s.%d.%d.tmp" % (path, os.getpid(), threading.get_ident())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def human(n):
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1000.0
    return "%d" % n


def pid1_environment():
    """Variables of the container's PID 1: RunPod puts a pod's env there, not in SSH sessions."""
    env = {}
    try:
        with open("/proc/1/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    env[key] = value
    except OSError:
        pass
    return env


_PID1 = None


def pod_env(name):
    global _PID1
    if os.environ.get(name):
        return os.environ[name]
    if _PID1 is None:
        _PID1 = pid1_environment()
    return _PID1.get(name) or None


def check_name(name):
    """None when ``name`` can be a file name in a model folder, else what is wrong with it."""
    if not name or not name.strip():
        return "it is empty"
    if "/" in name or "\\" in name:
        return "it holds a '/' (a file name, not a path)"
    if name in (".", "..") or ".." in name:
        return "it holds '..'"
    if re.search(r"[\x00-\x1f\x7f-\x9f]", name):
        return "it holds control characters"
    if name.startswith("."):
        return "it starts with '.' (a hidden file ComfyUI does not list)"
    if len(name.encode("utf-8", "surrogateescape")) > 240:
        return "it is longer than 240 bytes"
    return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK * 4)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def lock_try(path):
    """(fd, True) holding an exclusive lock on ``path``; (None, False) when another process holds it;
    (fd, None) where this file system has no locks."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, True
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            os.close(fd)
            return None, False
        return fd, None


def lock_held(path):
    """True when a process holds the lock on ``path``."""
    if not os.path.exists(path):
        return False
    fd, got = lock_try(path)
    if fd is not None:
        os.close(fd)  # closing releases what was just taken
    return got is False


# --- where things are -------------------------------------------------------------------------


def volume_dir(req):
    """The network volume's mount point in this pod (the simulator keeps it elsewhere: AUTOPOD_VOLUME_DIR)."""
    return pod_env("AUTOPOD_VOLUME_DIR") or req.get("mount") or "/workspace"


def state_dir(req):
    """Where jobs, locks and records live: on the volume, so every pod that attaches it sees them."""
    d = pod_env("AUTOPOD_MODELS_DIR")
    if not d:
        mount = volume_dir(req)
        if os.path.isdir(mount) and os.access(mount, os.W_OK):
            d = os.path.join(mount, ".autopod", "models")
        else:
            d = os.path.join(os.path.expanduser("~"), ".autopod", "models")
    for sub in ("", "jobs", "records", "bin"):
        os.makedirs(os.path.join(d, sub), mode=0o700, exist_ok=True)
    return d


def this_pod(req):
    return pod_env("RUNPOD_POD_ID") or req.get("pod_id") or socket.gethostname()


def comfy_get(address, path, timeout=10.0):
    with urllib.request.urlopen("http://%s%s" % (address, path), timeout=timeout) as r:
        return json.loads(r.read().decode("utf-8"))


def comfy_folders(req, wait_s=None):
    """ComfyUI's model folders as it answers them: {folder: [absolute paths]}; waits for a ComfyUI that
    is still starting (a first boot copies it onto the volume)."""
    address = req.get("comfy_address") or "127.0.0.1:8188"
    deadline = now() + float(req.get("comfy_wait_s", 300) if wait_s is None else wait_s)
    said = False
    while True:
        try:
            try:
                doc = comfy_get(address, "/experiment/models")
                return {str(e["name"]): [str(p) for p in e.get("folders") or []] for e in doc
                        if isinstance(e, dict) and e.get("name")}
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
            doc = comfy_get(address, "/internal/folder_paths")
            out = {}
            for key, paths in doc.items():  # older ComfyUIs answer [[path, [extensions]], ...]
                out[key] = [p[0] if isinstance(p, list) else p for p in paths or []]
            return {k: v for k, v in out.items() if k not in NOT_MODEL_FOLDERS}
        except (OSError, ValueError, http.client.HTTPException) as e:
            if now() >= deadline:
                raise Fail("ComfyUI at %s does not answer (%s): autopod asks it where its model folders are; "
                           "wait until it runs (`autopod comfy.status --wait 600`)" % (address, e))
            if not said:
                emit({"event": "note", "msg": "waiting for ComfyUI at %s to answer" % address})
                said = True
            time.sleep(0.5)


def canonical_folder(folder, folders):
    """ComfyUI's name for ``folder`` (legacy names mapped); a folder it does not know is bad input."""
    f = LEGACY.get(folder, folder)
    if f not in folders:
        raise Fail("ComfyUI on this pod has no model folder %r; it has: %s (a folder of a custom node "
                   "exists once that node is installed)" % (folder, ", ".join(sorted(folders))), code=2)
    return f


def target_dir(paths, mount):
    """The folder's first path on the volume, else its first path."""
    if not paths:
        return None
    mount = os.path.realpath(mount) if mount else None
    for p in paths:
        rp = os.path.realpath(p)
        if mount and (rp == mount or rp.startswith(mount.rstrip("/") + "/")):
            return p
    return paths[0]


def placement(folder, paths, mount):
    """(the directory a model file goes in, the directory of ComfyUI's link to it or None). On a volume:
    ``<mount>/models/<worker folder>``, linked from ComfyUI's own folder unless ComfyUI reads that one
    itself; without a mount, ComfyUI's folder."""
    comfy = target_dir(paths, mount)
    if not mount or not os.path.isdir(mount):
        return comfy, None
    shared = os.path.join(mount, "models", WORKER_FOLDERS.get(folder, folder))
    if comfy is None or any(os.path.realpath(p) == os.path.realpath(shared) for p in paths):
        return shared, None
    return shared, comfy


def link_into(link_dir, path):
    """A relative link to ``path`` in ComfyUI's folder ``link_dir`` (relative: the volume is /workspace on a
    pod and /runpod-volume on an endpoint). A real file of that name there is left alone. Returns the link."""
    if not link_dir:
        return None
    os.makedirs(link_dir, exist_ok=True)
    link = os.path.join(link_dir, os.path.basename(path))
    rel = os.path.relpath(path, link_dir)
    if os.path.islink(link):
        if os.readlink(link) == rel:
            return link
    elif os.path.exists(link):
        return None
    tmp = "%s.%d.link" % (link, os.getpid())
    os.symlink(rel, tmp)
    os.replace(tmp, link)  # a new directory entry: ComfyUI's listing cache sees the folder changed
    return link


def adopt_legacy(sd, directory, link_dir, name):
    """A file pulled into ComfyUI's own folder before this layout: moved to the shared folder (one rename on
    the volume) and linked, so the next pull finds it and worker-comfyui sees it."""
    if not link_dir:
        return
    old, new = os.path.join(link_dir, name), os.path.join(directory, name)
    if os.path.islink(old) or not os.path.isfile(old) or os.path.exists(new):
        return
    os.makedirs(directory, exist_ok=True)
    rec_old = record_path(sd, old)
    rec = read_json(rec_old, None)
    try:
        os.rename(old, new)
    except OSError:
        return  # another file system (ComfyUI's folder off the volume): leave it where it is
    emit({"event": "note", "msg": "moved %s to %s, where Serverless workers find it too" % (old, new)})
    if rec:
        rec["path"] = new
        write_json(record_path(sd, new), rec)
        try:
            os.remove(rec_old)
        except OSError:
            pass
    link_into(link_dir, new)


def worker_view(path, mount):
    """What worker-comfyui makes of a model file: {"sees": bool, "path": its path there, "why": reason}."""
    real = os.path.realpath(path)
    root = os.path.realpath(mount) if mount else None
    if not root or not (real == root or real.startswith(root.rstrip("/") + "/")):
        return {"sees": False, "path": None, "why": "not on the network volume"}
    rel = os.path.relpath(real, root).replace(os.sep, "/")
    parts = rel.split("/")
    if len(parts) < 3 or parts[0] != "models":
        return {"sees": False, "path": None,
                "why": "in %s, outside models/ on the volume: worker-comfyui reads only models/{%s}"
                       % (os.path.dirname(rel), ",".join(sorted(set(WORKER_FOLDERS.values()))))}
    sub = parts[1]
    if sub not in WORKER_FOLDERS.values():
        key = LEGACY.get(sub, sub)
        instead = WORKER_FOLDERS.get(key)
        return {"sees": False, "path": None,
                "why": "worker-comfyui 5.8.5 does not read models/%s%s" % (
                    sub, " (it reads models/%s)" % instead if instead else " at all")}
    return {"sees": True, "path": WORKER_MOUNT + "/" + rel, "why": None}


def listed(req, folder, name):
    """Whether ComfyUI lists ``name`` in ``folder`` now (its own cache, without a restart)."""
    try:
        names = comfy_get(req.get("comfy_address") or "127.0.0.1:8188", "/models/" + urllib.parse.quote(folder), 10)
        return name in names
    except (OSError, ValueError, http.client.HTTPException):
        return None


# --- URLs and HTTP ----------------------------------------------------------------------------


def source_kind(url):
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host in HF_HOSTS or host.endswith(".huggingface.co"):
        return "hf"
    if host in CIVITAI_HOSTS or any(host.endswith("." + h) for h in CIVITAI_HOSTS):
        return "civitai"
    return "other"


ENDPOINT_ENV = {"hf": "HF_ENDPOINT", "civitai": "CIVITAI_ENDPOINT"}


def mapped(url, endpoints=None):
    """(the URL to fetch, its kind): Hugging Face and Civitai URLs go to HF_ENDPOINT / CIVITAI_ENDPOINT
    (``endpoints`` instead of the environment, for a probe from autopod's side)."""
    kind = source_kind(url)
    base = (endpoints or {}).get(kind) if endpoints is not None else \
        (pod_env(ENDPOINT_ENV[kind]) if kind in ENDPOINT_ENV else None)
    if not base:
        return url, kind
    u = urllib.parse.urlsplit(url)
    b = urllib.parse.urlsplit(base.rstrip("/"))
    return urllib.parse.urlunsplit((b.scheme, b.netloc, b.path + u.path, u.query, "")), kind


def origin(url):
    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return (u.scheme, (u.hostname or "").lower(), port)


class Answer:
    """An HTTP answer after the redirects, with the facts the hops announced on the way."""

    def __init__(self, conn, resp, url, hops):
        self.conn, self.resp, self.url, self.hops = conn, resp, url, hops

    @property
    def status(self):
        return self.resp.status

    def header(self, name):
        for h in [self.resp] + list(reversed(self.hops)):
            v = h.getheader(name) if hasattr(h, "getheader") else h.get(name.lower())
            if v:
                return v
        return None

    def close(self):
        try:
            self.conn.close()
        except OSError:
            pass


def _connection(url, timeout):
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port
    if u.scheme not in ("http", "https") or not host:
        raise Fail("cannot fetch %s: only http:// and https:// URLs" % redact_url(url), code=2)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(u.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if u.scheme == "https":
            conn = http.client.HTTPSConnection(p.hostname, p.port or 8080, timeout=timeout,
                                               context=ssl.create_default_context())
            conn.set_tunnel(host, port or 443)
            return conn, False
        return http.client.HTTPConnection(p.hostname, p.port or 8080, timeout=timeout), True
    if u.scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context()), False
    return http.client.HTTPConnection(host, port, timeout=timeout), False


def redact_url(url):
    """A URL for messages: no query (signed URLs carry credentials there)."""
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, "", ""))


def fetch(url, token, token_origin, method="GET", headers=None, timeout=30.0, max_redirects=10):
    """``method url`` with redirects followed by hand: ``token`` goes only to ``token_origin``
    (scheme, host, port), never to the host a redirect points at."""
    hops = []
    for _ in range(max_redirects + 1):
        conn, absolute = _connection(url, timeout)
        u = urllib.parse.urlsplit(url)
        path = url if absolute else (u.path or "/") + ("?" + u.query if u.query else "")
        h = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", "Accept": "*/*"}
        h.update(headers or {})
        if token and origin(url) == token_origin:
            h["Authorization"] = "Bearer " + token
        try:
            conn.request(method, path, headers=h)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise Fail("cannot reach %s: %s" % (u.hostname, e), retry=True)
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            hops.append({k.lower(): v for k, v in resp.getheaders()})
            resp.read(65536)
            conn.close()
            nxt = urllib.parse.urljoin(url, resp.getheader("Location"))
            if urllib.parse.urlsplit(url).scheme == "https" and urllib.parse.urlsplit(nxt).scheme != "https":
                raise Fail("%s redirects to plain http (%s): refused" % (redact_url(url), redact_url(nxt)))
            if resp.status == 303 and method != "HEAD":
                method = "GET"
            url = nxt
            continue
        return Answer(conn, resp, url, hops)
    raise Fail("%s: more than %d redirects" % (redact_url(url), max_redirects))


def token_env(kind):
    return {"hf": "HF_TOKEN", "civitai": "CIVITAI_API_TOKEN"}.get(kind, "")


def token_key(kind):
    return {"hf": "hf_token", "civitai": "civitai_api_token"}.get(kind, "")


def refusal(ans, kind, had_token, url):
    """The error for a 4xx/5xx answer: which token is needed, what is gone, what to retry."""
    st = ans.status
    code = ans.header("X-Error-Code") or ""
    body = ""
    try:
        body = ans.resp.read(4096).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        pass
    detail = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict):
            detail = str(doc.get("message") or doc.get("error") or "")[:200]
    except ValueError:
        pass
    detail = detail or (ans.header("X-Error-Message") or "")[:200]
    tail = ": " + detail if detail else ""
    where = redact_url(url)
    if st in (401, 403, 451) and kind in ("hf", "civitai"):
        site = "Hugging Face" if kind == "hf" else "Civitai"
        if not had_token:
            return Fail("%s answered %d for %s: the model is gated or private, or %s wants you signed in; set %s "
                        "(or %s in autopod's config.yaml)%s" % (site, st, where, site, token_env(kind),
                                                                 token_key(kind), tail), status=st)
        hint = ("accept the model's licence on its page and check that the token may read gated repositories"
                if kind == "hf" else "the account may lack access (early access, downloads turned off)")
        return Fail("%s refused %s with the token from %s (%d%s): %s%s"
                    % (site, where, token_env(kind), st, ", " + code if code else "", hint, tail), status=st)
    if st in (401, 403, 451):
        return Fail("%s answered %d%s: it wants credentials, and autopod sends tokens only to Hugging Face and "
                    "Civitai" % (where, st, tail), status=st)
    if st == 404:
        return Fail("%s: not found (404%s)%s" % (where, ", " + code if code else "", tail), status=st)
    if st == 410:
        return Fail("%s: gone (410)%s" % (where, tail), status=st)
    if st == 416:
        return Fail("%s answered 416 to a range request" % where, retry=True, status=st)
    if st in RETRY_STATUS:
        return Fail("%s answered %d%s" % (where, st, tail), retry=True, status=st)
    return Fail("%s answered %d%s" % (where, st, tail), status=st)


def retry_after(ans):
    """Seconds to wait before asking again, from Retry-After or Hugging Face's RateLimit header."""
    v = ans.header("Retry-After")
    if v and v.strip().isdigit():
        return min(60.0, float(v))
    m = re.search(r"\bt=(\d+)", ans.header("RateLimit") or "")
    return min(60.0, float(m.group(1))) if m else None


def disposition_name(value):
    if not value:
        return None
    m = Message()
    m["content-disposition"] = value
    name = m.get_filename()
    return os.path.basename(name.replace("\\", "/")) if name else None


def url_name(url):
    path = urllib.parse.urlsplit(url).path
    last = urllib.parse.unquote(path.rsplit("/", 1)[-1]) if path else ""
    return last or None


def looks_html(ctype, first):
    if (ctype or "").split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    head = (first or b"")[:512].lstrip().lower()
    return head.startswith(b"<!doctype html") or head.startswith(b"<html")


# --- what the source says -----------------------------------------------------------------------


def civitai_version_id(url):
    m = re.search(r"/api/download/models/(\d+)", urllib.parse.urlsplit(url).path)
    return m.group(1) if m else None


def civitai_facts(url, token, tok_origin, timeout):
    """sha256, size, name and model type of the file a Civitai download URL names (its model-version API)."""
    vid = civitai_version_id(url)
    if not vid:
        return {}
    u = urllib.parse.urlsplit(url)
    api = urllib.parse.urlunsplit((u.scheme, u.netloc, u.path.split("/api/download/")[0] + "/api/v1/model-versions/"
                                   + vid, "", ""))
    try:
        ans = fetch(api, token, tok_origin, timeout=timeout)
    except Fail:
        return {}
    try:
        if ans.status != 200:
            return {}
        doc = json.loads(ans.resp.read(4 * 1024 * 1024).decode("utf-8"))
    except (ValueError, OSError, http.client.HTTPException):
        return {}
    finally:
        ans.close()
    files = [f for f in doc.get("files") or [] if isinstance(f, dict)]
    q = dict(urllib.parse.parse_qsl(u.query))
    if q.get("fileId"):
        cands = [f for f in files if str(f.get("id")) == q["fileId"]]
    else:
        cands = files
        if q.get("type"):
            cands = [f for f in cands if str(f.get("type", "")).lower() == q["type"].lower()]
        for key in ("format", "size", "fp"):
            if q.get(key):
                cands = [f for f in cands if str((f.get("metadata") or {}).get(key, "")).lower() == q[key].lower()]
        if len(cands) > 1:  # Civitai serves the primary file of those that fit
            cands = [f for f in cands if f.get("primary")] or cands
    chosen = cands[0] if len(cands) == 1 else None
    out = {"type": ((doc.get("model") or {}).get("type") or "")}
    if chosen:
        sha = str((chosen.get("hashes") or {}).get("SHA256") or "").lower()
        if re.fullmatch(r"[0-9a-f]{64}", sha):
            out["sha256"] = sha
        if isinstance(chosen.get("sizeKB"), (int, float)):
            out["size_approx"] = int(float(chosen["sizeKB"]) * 1024)
        out["file_name"] = chosen.get("name")
    return out


def probe(url, tokens, timeout=30.0, endpoints=None):
    """What the source says about ``url`` without downloading it: final URL, size, sha256, name, type.
    Raises Fail for answers that are not a model (401/403/404, an HTML page)."""
    target, kind = mapped(url, endpoints)
    token = (tokens or {}).get(kind)
    tok_origin = origin(target)
    facts = {"kind": kind, "fetch_url": target}
    if kind == "civitai":
        facts.update(civitai_facts(target, token, tok_origin, timeout))
    attempt = 0
    while True:
        attempt += 1
        ans = fetch(target, token, tok_origin, method="HEAD", timeout=timeout)
        try:
            if ans.status in (405, 501) or ans.status >= 400:
                # No HEAD here, or an error whose explanation is in its body: ask for one byte instead.
                ans.close()
                ans = fetch(target, token, tok_origin, headers={"Range": "bytes=0-0"}, timeout=timeout)
            if ans.status >= 400:
                err = refusal(ans, kind, bool(token), url)
                if err.retry and attempt < 4:
                    time.sleep(retry_after(ans) or attempt)
                    continue
                raise err
            ctype = ans.resp.getheader("Content-Type")
            if looks_html(ctype, b""):
                raise Fail("%s answers an HTML page, not a model file%s" % (
                    redact_url(url), " (a Hugging Face page URL? use its /resolve/ link)" if kind == "hf" else ""))
            # Hugging Face's etag is the sha256 of a large (LFS) file; a small git file's is a sha1. Other
            # hosts' etags mean anything, so they are not taken for a hash.
            linked = (ans.header("X-Linked-Etag") or (ans.header("ETag") if kind == "hf" else "") or "")
            linked = linked.replace("W/", "").strip('" ')
            if re.fullmatch(r"[0-9a-fA-F]{64}", linked) and not facts.get("sha256"):
                facts["sha256"] = linked.lower()
                facts["sha256_source"] = "X-Linked-Etag"
            elif facts.get("sha256"):
                facts["sha256_source"] = "Civitai model-version API"
            size = ans.header("X-Linked-Size")
            if size and size.isdigit():
                facts["size"] = int(size)
            total = content_total(ans.resp)
            if total is not None:
                facts["length"] = total
                if "size" not in facts and "size_approx" not in facts:
                    facts["size"] = total
            facts["name_served"] = disposition_name(ans.resp.getheader("Content-Disposition"))
            facts["content_type"] = ctype
            facts["ranges"] = (ans.resp.getheader("Accept-Ranges") or "").lower() == "bytes"
            return facts
        finally:
            ans.close()


def content_total(resp):
    """The whole file's length from a 200's Content-Length or a 206's Content-Range."""
    cr = resp.getheader("Content-Range") or ""
    m = re.match(r"bytes (\d+)-(\d+)/(\d+)", cr)
    if m:
        return int(m.group(3))
    cl = resp.getheader("Content-Length")
    if cl and cl.isdigit() and resp.status == 200:
        return int(cl)
    return None


def size_problem(total, facts):
    """Why ``total`` (what the server is about to send) is not the announced file, or None."""
    exact = facts.get("size")
    if exact is not None and total is not None and total != exact:
        return "the server sends %s but announced %s" % (human(total), human(exact))
    approx = facts.get("size_approx")
    if approx and total is not None and abs(total - approx) > max(64 * 1024, approx // 100):
        return "the server sends %s but Civitai lists the file at about %s" % (human(total), human(approx))
    return None


# --- jobs -------------------------------------------------------------------------------------


def job_key(url, directory, name):
    return hashlib.sha256(("%s\0%s\0%s" % (url, os.path.realpath(directory), name)).encode()).hexdigest()[:24]


def record_path(sd, path):
    return os.path.join(sd, "records", hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:24] + ".json")


def running(jobdir, job):
    """True while a download works on this job: its lock is held here, or another pod's heartbeat is fresh."""
    if lock_held(os.path.join(jobdir, "lock")):
        return True
    if job and job.get("status") in ("starting", "downloading", "verifying"):
        beat = job.get("heartbeat") or 0
        if job.get("host") != socket.gethostname() and now() - beat < FRESH_S:
            return True  # a download on another pod of this volume, where locks do not reach
    return False


def disk_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_space(directory, need, name):
    if need is None or need <= 0:
        return
    free = disk_free(directory)
    if need > free:
        raise Fail("not enough space for %s in %s: it needs %s more, %s are free; free some space or grow the "
                   "volume" % (name, directory, human(need), human(free)))


def present(req, sd, path, facts, want_sha):
    """(True, record) when ``path`` is the wanted file: size and sha256 as announced or asked for; (False, why)
    when a different file is there."""
    st = os.stat(path)
    rec = read_json(record_path(sd, path), {}) or {}
    size = (facts or {}).get("size")
    if size is not None and st.st_size != size:
        return False, "%s is there with %s, not the %s announced" % (path, human(st.st_size), human(size))
    if rec.get("size") == st.st_size and rec.get("mtime") == st.st_mtime and rec.get("sha256"):
        sha = rec["sha256"]
    else:
        emit({"event": "note", "msg": "checking the sha256 of %s (%s)" % (os.path.basename(path), human(st.st_size))})
        sha = sha256_file(path)
    if want_sha and sha != want_sha:
        return False, "%s is there with sha256 %s, not %s" % (path, sha[:16] + "...", want_sha[:16] + "...")
    fresh = rec.get("sha256") != sha or rec.get("size") != st.st_size or rec.get("mtime") != st.st_mtime
    if want_sha and not rec.get("verified"):
        rec.update({"verified": True, "sha256_source": (facts or {}).get("sha256_source") or "asked for"})
        fresh = True
    if fresh:
        rec.update({"path": path, "sha256": sha, "size": st.st_size, "mtime": st.st_mtime, "checked_at": now()})
        rec.setdefault("name", os.path.basename(path))
        write_json(record_path(sd, path), rec)
    return True, rec


# --- the front: plan, start or join, follow ----------------------------------------------------


def cmd_pull(req):
    """Resolve, check, then start the download (or join the one running) and follow it."""
    url = req["url"]
    tokens = req.get("tokens") or {}
    timeout = float(req.get("http_timeout_s", 30))
    sd = state_dir(req)
    want = (req.get("sha256") or "").lower() or None
    folders = comfy_folders(req)
    folder = req.get("folder")
    name = req.get("name")
    facts = None
    if folder:
        folder = canonical_folder(folder, folders)
    if name:
        bad = check_name(name)
        if bad:
            raise Fail("cannot save the model as %r: %s" % (name, bad), code=2)
    # A file pulled before from this URL, unchanged since: ok without asking the source again.
    if folder and name:
        directory, link_dir = placement(folder, folders[folder], volume_dir(req))
        if directory is not None:
            adopt_legacy(sd, directory, link_dir, name)
            path = os.path.join(directory, name)
            rec = read_json(record_path(sd, path), {}) or {}
            if os.path.isfile(path) and rec.get("url") == url and (not want or rec.get("sha256") == want):
                st = os.stat(path)
                if rec.get("size") == st.st_size and rec.get("mtime") == st.st_mtime:
                    link_into(link_dir, path)
                    return done_doc("ok", req, folder, path, rec, msg="already there")
    facts = probe(url, tokens, timeout)
    if not folder:
        guess = CIVITAI_FOLDERS.get(str(facts.get("type") or "").lower().replace(" ", ""))
        if not guess or guess not in folders:
            raise Fail("which model folder? give --folder (ComfyUI on this pod has: %s)" % ", ".join(sorted(folders)),
                       code=2)
        folder = guess
    if not name:
        name = facts.get("name_served") or (url_name(url) if facts["kind"] != "civitai" else None) \
            or facts.get("file_name")
        if not name:
            raise Fail("cannot tell the file name from %s: give --name" % redact_url(url), code=2)
        bad = check_name(name)
        if bad:
            raise Fail("the server names the file %r, which cannot be saved: %s; give --name" % (name, bad), code=2)
    source_sha = facts.get("sha256")
    if want and source_sha and want != source_sha:
        raise Fail("%s announces sha256 %s, not the %s asked for; nothing was downloaded"
                   % (redact_url(url), source_sha, want))
    expected = want or source_sha
    directory, link_dir = placement(folder, folders[folder], volume_dir(req))
    if directory is None:
        raise Fail("ComfyUI lists no path for model folder %r" % folder)
    os.makedirs(directory, exist_ok=True)
    adopt_legacy(sd, directory, link_dir, name)
    path = os.path.join(directory, name)
    key = job_key(url, directory, name)
    jobdir = os.path.join(sd, "jobs", key)
    os.makedirs(jobdir, mode=0o700, exist_ok=True)
    # One process at a time decides whether to start this job: a second pull waits here until the first
    # one's download holds the job's lock, then follows it.
    gate = lock_wait(os.path.join(jobdir, "start.lock"))
    try:
        if os.path.exists(path):
            ok, info = present(req, sd, path, facts, expected)
            if not ok:
                raise Fail("a different file is already there: %s; remove it first (`autopod model.rm %s --folder %s`)"
                           " or pull under another --name" % (info, name, folder))
            if not info.get("url"):
                info.update({"url": url, "folder": folder})
                write_json(record_path(sd, path), info)
            link_into(link_dir, path)
            return done_doc("ok", req, folder, path, info, msg="already there")
        job = read_json(os.path.join(jobdir, "job.json"), {}) or {}
        if running(jobdir, job):
            emit({"event": "note", "msg": "a pull of %s is already running (from pod %s); following it"
                                         % (name, job.get("pod") or "?")})
            run = job.get("run")
            os.close(gate)
            gate = None
            return follow(req, jobdir, None, run=run, joined=True)
        part = os.path.join(directory, ".%s.%s.part" % (name, key[:12]))
        have = os.path.getsize(part) if os.path.exists(part) else 0
        size = facts.get("size") or facts.get("size_approx") or facts.get("length")
        check_space(directory, (size - have) if size else None, name)
        nonce = "%016x" % random.getrandbits(64)
        job = {"key": key, "url": url, "folder": folder, "name": name, "path": path, "part": part, "dir": directory,
               "link_dir": link_dir,
               "sha256": expected, "sha256_source": "asked for" if want else facts.get("sha256_source"),
               "facts": {k: v for k, v in facts.items() if k in ("size", "size_approx", "length", "kind")},
               "status": "starting", "bytes": have, "total": size, "resumed_from": have, "queued_at": now(),
               "pod": this_pod(req), "comfy_address": req.get("comfy_address"),
               "stall_s": float(req.get("stall_s", 30)), "attempts": int(req.get("attempts", 5)),
               "http_timeout_s": timeout, "version": VERSION}
        write_json(os.path.join(jobdir, "job.json"), job)
        # Still wanted? If autopod went away (Ctrl-C) while this waited for ComfyUI, this write fails and
        # nothing starts behind the user's back.
        emit({"event": "progress", "status": "starting", "bytes": have, "total": size, "name": name})
        child = start_child(jobdir, nonce, tokens, close=[gate] if gate is not None else [])
        deadline = now() + 30
        while now() < deadline and child.poll() is None:  # until the download holds the job's lock
            if (read_json(os.path.join(jobdir, "job.json"), {}) or {}).get("run") == nonce:
                break
            time.sleep(0.02)
    finally:
        if gate is not None:
            os.close(gate)
    if child.poll() == LOST_LOCK:  # another pod's download of this volume got there first
        job = read_json(os.path.join(jobdir, "job.json"), {}) or {}
        return follow(req, jobdir, None, run=job.get("run"), joined=True)
    doc = follow(req, jobdir, child, run=nonce)
    if not req.get("detach"):
        child.wait(5.0)  # it ends right after its last word: reap it rather than leave it to init
    return doc


def lock_wait(path, timeout=120.0):
    """An fd holding an exclusive lock on ``path`` (waiting for it), or None where locks do not work."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = now() + timeout
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                return None
            if now() > deadline:
                os.close(fd)
                raise Fail("another pull of this file keeps its start lock (%s); try again" % path)
            time.sleep(0.05)


def follow(req, jobdir, child, run=None, joined=False):
    """Report the job's progress until run ``run`` ends (or, with ``detach``, at once)."""
    path = os.path.join(jobdir, "job.json")
    last = None
    while True:
        job = read_json(path, {}) or {}
        ours = job.get("run") == run
        status = job.get("status") if ours else "starting"
        if child is not None and not ours and child.poll() is not None:
            return {"event": "result", "result": "failed", "code": 1,
                    "error": "the download program exited at once (exit %s); its log: %s"
                             % (child.returncode, os.path.join(jobdir, "pull.log"))}
        if req.get("detach"):
            return {"event": "result", "result": "joined" if joined else "started", "job": public(job),
                    "msg": "pulling %s in the pod" % job.get("name")}
        if ours and status == "failed":
            return {"event": "result", "result": "failed", "error": job.get("error") or "the pull failed",
                    "code": int(job.get("code") or 1), "job": public(job)}
        if ours and status == "done":
            res = dict(job.get("result") or {})
            res.update({"event": "result", "result": "joined" if joined else "changed", "job": public(job)})
            return res
        alive = running(jobdir, job) or (child is not None and child.poll() is None)
        if not alive:
            job = read_json(path, {}) or {}
            if job.get("run") == run and job.get("status") in ("done", "failed"):
                continue  # it ended between the two looks
            return {"event": "result", "result": "failed", "code": 1, "job": public(job),
                    "error": "the download of %s stopped (its program ended) after %s; pull again to resume"
                             % (job.get("name"), human(job.get("bytes")))}
        view = (status, job.get("bytes"), job.get("total"))
        if view != last:
            emit({"event": "progress", "status": status, "bytes": job.get("bytes"), "total": job.get("total"),
                  "speed": job.get("speed"), "name": job.get("name")})
            last = view
        if child is not None:
            child.nap(0.05)
        else:
            time.sleep(0.05)


def public(job):
    return {k: job.get(k) for k in ("key", "url", "folder", "name", "path", "status", "bytes", "total", "sha256",
                                    "sha256_source", "pod", "started_at", "finished_at", "resumed_from", "error",
                                    "speed", "attempt")}


def done_doc(result, req, folder, path, rec, msg=""):
    return {"event": "result", "result": result, "folder": folder, "name": os.path.basename(path), "path": path,
            "size": rec.get("size"), "sha256": rec.get("sha256"), "url": rec.get("url"), "msg": msg,
            "verified": bool(rec.get("verified")), "sha256_source": rec.get("sha256_source"),
            "listed": listed(req, folder, os.path.basename(path))}


# --- the download itself (detached) ------------------------------------------------------------


class Job:
    """The detached download: owns the job's lock and ``job.json``; never writes a token anywhere."""

    def __init__(self, jobdir):
        self.dir = jobdir
        self.path = os.path.join(jobdir, "job.json")
        self.doc = read_json(self.path, {}) or {}
        self.last_write = 0.0

    def save(self, force=False, **fields):
        self.doc.update(fields)
        t = now()
        if force or t - self.last_write >= 0.5:
            self.doc["heartbeat"] = t
            write_json(self.path, self.doc)
            self.last_write = t


def run_job(jobdir, nonce, tokens):
    """The detached download (a forked child in a session of its own): takes the job's lock or leaves
    (another download has it), then downloads and records how it ended. Returns the exit code."""
    lock_fd, got = lock_try(os.path.join(jobdir, "lock"))
    if got is False:
        return LOST_LOCK
    job = Job(jobdir)
    if got is None and running(jobdir, job.doc):
        return LOST_LOCK
    stop = []
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    job.save(force=True, status="downloading", run=nonce, pid=os.getpid(), host=socket.gethostname(),
             started_at=now(), error=None, code=None, result=None, finished_at=None)
    try:
        result = download(job, tokens, stop)
        job.save(force=True, status="done", result=result, finished_at=now(), speed=None)
        return 0
    except Fail as e:
        job.save(force=True, status="failed", error=e.msg, code=e.code, finished_at=now())
        return 1
    except Exception as e:  # noqa: BLE001 (whatever went wrong is the job's answer, not a traceback nobody reads)
        job.save(force=True, status="failed", error="%s: %s" % (type(e).__name__, e), code=1, finished_at=now())
        import traceback

        traceback.print_exc()
        return 1
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


class Child:
    """The forked download, as the front sees it: ``poll()`` is its exit code once it ended, else None."""

    def __init__(self, pid, ended=None):
        self.pid = pid
        self.ended = ended  # readable (at EOF) once the download has exited: wakes ``follow`` at once
        self.returncode = None

    def nap(self, seconds):
        """Sleep ``seconds``, or less if the download exits meanwhile."""
        if self.ended is None or self.returncode is not None:
            time.sleep(seconds)
            return
        try:
            if not select.select([self.ended], [], [], seconds)[0]:
                return
        except (OSError, ValueError):
            time.sleep(seconds)
        os.close(self.ended)  # it ended: later naps sleep in full
        self.ended = None

    def wait(self, timeout):
        deadline = now() + timeout
        while self.poll() is None and now() < deadline:
            time.sleep(0.01)
        if self.returncode is not None and self.ended is not None:
            os.close(self.ended)
            self.ended = None
        return self.returncode

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        return self.returncode


def start_child(jobdir, nonce, tokens, close=()):
    """Fork the download into a new session, so it outlives this SSH session (and the laptop's link).
    A fork, not a new interpreter: the tokens stay in this process's memory, never in a pipe or a file."""
    sys.stdout.flush()
    try:
        ended, alive = os.pipe()  # the download holds the write end until it exits
    except OSError:
        ended = alive = None
    pid = os.fork()
    if pid:
        if alive is not None:
            os.close(alive)
        return Child(pid, ended)
    code = 1
    try:
        os.setsid()
        if ended is not None:
            os.close(ended)
        for fd in close:
            try:
                os.close(fd)
            except OSError:
                pass
        null = os.open(os.devnull, os.O_RDWR)
        logfd = os.open(os.path.join(jobdir, "pull.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        code = run_job(jobdir, nonce, tokens)
    finally:
        os._exit(code)


def download(job, tokens, stop):
    d = job.doc
    url, part, final = d["url"], d["part"], d["path"]
    target, kind = mapped(url)
    token = tokens.get(kind)
    tok_origin = origin(target)
    facts = dict(d.get("facts") or {})
    stall_s = float(d.get("stall_s") or 30)
    tries = int(d.get("attempts") or 5)
    attempt = 0
    fails = 0  # attempts in a row that brought no byte: a server that makes progress is asked again
    h = None
    have = 0
    total = None
    while True:
        attempt += 1
        if stop:
            raise Fail("stopped (SIGTERM) after %s; pull again to resume" % human(have))
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if h is None or h[1] != have:  # the hash must cover exactly what is on disk
            if have:
                job.save(force=True, status="verifying", bytes=have,
                         note="hashing the %s downloaded before" % human(have))
            h = [hashlib.sha256(), have]
            if have:
                with open(part, "rb") as f:
                    while True:
                        block = f.read(CHUNK * 4)
                        if not block:
                            break
                        h[0].update(block)
        headers = {"Range": "bytes=%d-" % have} if have else {}
        try:
            ans = fetch(target, token, tok_origin, headers=headers, timeout=min(stall_s, 30.0))
        except Fail as e:
            fails += 1
            if e.retry and fails < tries:
                backoff(fails, job)
                continue
            raise
        try:
            if ans.status == 416 and have:
                if content_total_416(ans.resp) == have:
                    total = have
                    break  # everything is here already
                os.truncate(part, 0)
                continue
            if ans.status >= 400:
                err = refusal(ans, kind, bool(token), url)
                fails += 1
                if err.retry and fails < tries:
                    backoff(fails, job, retry_after(ans))
                    continue
                raise err
            if ans.status == 200 and have:  # the server ignored the range: start over
                os.truncate(part, 0)
                have = 0
                h = [hashlib.sha256(), 0]
            elif ans.status == 206:
                m = re.match(r"bytes (\d+)-", ans.resp.getheader("Content-Range") or "")
                if not m or int(m.group(1)) != have:
                    os.truncate(part, 0)
                    continue
            if looks_html(ans.resp.getheader("Content-Type"), b""):
                raise Fail("refused %s: the server sent an HTML page, not a model file; nothing was saved"
                           % redact_url(url))
            total = content_total(ans.resp)
            problem = size_problem(total, facts)
            if problem:
                raise Fail("refused %s: %s; nothing was saved" % (redact_url(url), problem))
            check_space(d["dir"], (total - have) if total else None, d["name"])
            job.save(force=True, status="downloading", total=total or d.get("total"), bytes=have, attempt=attempt,
                     note=None)
            before = have
            try:
                got = stream(ans, part, h, job, stall_s, stop, url)
            except Fail:
                if os.path.exists(part) and os.path.getsize(part) == 0:
                    os.remove(part)
                raise
        finally:
            ans.close()
        have = os.path.getsize(part)
        if got == "done" and (total is None or have == total):
            break
        if stop:
            raise Fail("stopped (SIGTERM) after %s; pull again to resume" % human(have))
        fails = 0 if have > before else fails + 1
        if fails >= tries:
            raise Fail("%s, at %s of %s (%d tries in a row brought nothing); pull again to resume from there"
                       % (got if got != "done" else "the download ended short", human(have),
                          human(total or d.get("total")), fails))
        backoff(max(1, fails), job)
    sha = h[0].hexdigest()
    expected = d.get("sha256")
    if expected and sha != expected:
        os.remove(part)
        raise Fail("sha256 mismatch for %s: %s says %s, the downloaded bytes are %s; nothing was saved under %s"
                   % (d["name"], d.get("sha256_source") or "the source", expected, sha, d["name"]))
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    if os.path.exists(final):
        other = sha256_file(final)
        if other != sha:
            os.remove(part)
            raise Fail("%s appeared meanwhile with other bytes (sha256 %s); nothing was replaced" % (final, other))
    os.replace(part, final)
    try:
        dfd = os.open(os.path.dirname(final), os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass
    st = os.stat(final)
    sd = os.path.dirname(os.path.dirname(job.dir))
    rec = {"path": final, "name": d["name"], "folder": d["folder"], "url": url, "sha256": sha, "size": st.st_size,
           "mtime": st.st_mtime, "pulled_at": now(), "pod": d.get("pod"), "verified": bool(expected),
           "sha256_source": d.get("sha256_source") if expected else None}
    write_json(record_path(sd, final), rec)
    link_into(d.get("link_dir"), final)
    seen = None
    for _ in range(10):  # ComfyUI lists it without a restart: its folder's mtime changed
        seen = listed({"comfy_address": d.get("comfy_address")}, d["folder"], d["name"])
        if seen is not False:
            break
        time.sleep(0.2)
    started = d.get("started_at") or now()
    return {"folder": d["folder"], "name": d["name"], "path": final, "size": st.st_size, "sha256": sha,
            "verified": bool(expected), "sha256_source": rec["sha256_source"], "url": url,
            "downloaded": st.st_size - int(d.get("resumed_from") or 0), "resumed_from": d.get("resumed_from") or 0,
            "seconds": round(now() - started, 3), "listed": seen}


def content_total_416(resp):
    m = re.match(r"bytes \*/(\d+)", resp.getheader("Content-Range") or "")
    return int(m.group(1)) if m else None


def backoff(attempt, job, wait=None):
    pause = wait if wait is not None else min(30.0, 0.5 * (2 ** (attempt - 1)))
    job.save(force=True, status="downloading", note="trying again in %.1f s" % pause)
    time.sleep(pause)


def _splice_socket(ans, left):
    """The socket's fd when the body can go socket -> pipe -> file in the kernel: Linux with ``os.splice``
    (Python 3.10+), plain HTTP (TLS bytes must be decrypted here) and a known length; else None."""
    sock = getattr(ans.conn, "sock", None)
    if left is None or not hasattr(os, "splice") or sock is None or isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return sock.fileno()
    except (AttributeError, OSError):
        return None


def stream(ans, part, h, job, stall_s, stop, url):
    """Copy the body to ``part`` while a second thread hashes what was written (``_FileHasher``).
    Returns "done", or why it stopped early (a stall, a cut). Reads take what has arrived: bytes received
    before a stall are kept, and a resume starts after them. Memory stays flat: one reused buffer, a pipe.

    After the first read (which empties http.client's buffer and is checked for an HTML page), plain HTTP
    with a known length goes socket -> pipe -> file with ``os.splice``: the kernel copies each byte once,
    where reading into Python and writing out copies it twice, and on a machine of few cores that copy
    competes with the sha256 for CPU time. HTTPS, chunked answers, Pythons before 3.10 and file systems
    that refuse splice copy through the buffer."""
    resp = ans.resp
    try:
        ans.conn.sock.settimeout(min(stall_s, 5.0))
    except (AttributeError, OSError):
        pass
    # With a known length, read straight from the socket's buffer into ours; else (chunked) let http.client.
    left = resp.length if not resp.chunked and resp.length is not None else None
    fp = resp.fp
    sfd = _splice_socket(ans, left)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)  # written at explicit offsets: splice refuses O_APPEND
    buf = memoryview(bytearray(CHUNK))  # larger than http.client's buffer: its first read empties that
    written = h[1]
    hasher = _FileHasher(part, h[0], written)
    flusher = _Flusher(fd)
    pipe = poller = None
    first = True
    last_progress = now()
    got_since = 0
    t0, b0 = now(), written
    why = "done"
    try:
        while not stop:
            if left is not None and left <= 0:
                break
            data = None  # the bytes read, or None when they are in the pipe
            try:
                if pipe is not None:
                    try:
                        n = os.splice(sfd, pipe[1], min(CHUNK, left), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                    except BlockingIOError:
                        poller.poll(min(stall_s, 5.0) * 1000)
                        n = None
                elif left is not None:
                    n = fp.readinto1(buf[:min(CHUNK, left)])
                    data = buf[:n]
                else:
                    data = memoryview(resp.read1(CHUNK))
                    n = len(data)
            except socket.timeout:
                n = None
            except (OSError, http.client.HTTPException, ValueError) as e:
                why = "the connection broke (%s)" % (type(e).__name__)
                break
            t = now()
            if n is None:
                if t - last_progress >= stall_s:
                    why = "the server stopped sending (nothing for %d s)" % stall_s
                    break
                continue
            if not n:
                if left is not None:
                    why = "the connection closed %d bytes short" % left
                break
            if first:
                first = False
                if looks_html(resp.getheader("Content-Type"), bytes(data[:512])):
                    raise Fail("refused %s: the server sent an HTML page, not a model file; nothing was saved"
                               % redact_url(url))
                if sfd is not None:
                    pipe = _pipe()
                    if pipe is not None:
                        poller = select.poll()
                        poller.register(sfd, select.POLLIN)
            if left is not None:
                left -= n
            if data is not None:
                _write_all(fd, data, written)
            elif not _pipe_to_file(pipe[0], fd, n, written, buf):  # this file system takes no splice
                os.close(pipe[0])
                os.close(pipe[1])
                pipe = None
            written += n
            hasher.advance(written)
            got_since += n
            if got_since >= 1024:
                last_progress = t
                got_since = 0
            elif t - last_progress >= stall_s:
                why = "the server stopped sending (under 1 KB in %d s)" % stall_s
                break
            if t - job.last_write >= 0.5:
                speed = (written - b0) / max(1e-6, t - t0)
                job.save(bytes=written, speed=int(speed))
    finally:
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])
        flusher.close()
        os.close(fd)
        h[1] = written
        hasher.close(written)
    if hasher.error is not None:
        raise Fail("cannot read back %s to hash it: %s" % (part, hasher.error))
    if stop and why == "done":
        why = "stopped"
    job.save(force=True, bytes=written)
    return why


def _write_all(fd, view, offset):
    while view:
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


def _pipe():
    """A pipe as large as the system lets a user make one (1 MB by default): fewer calls per MB."""
    try:
        r, w = os.pipe()
    except OSError:
        return None
    try:
        import fcntl

        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    except (ImportError, OSError):
        pass
    return r, w


def _pipe_to_file(r, fd, n, offset, buf):
    """Move the ``n`` bytes in the pipe to the file at ``offset``. False when the file system refuses splice
    (the bytes are then read out of the pipe and written)."""
    moved = 0
    while moved < n:
        try:
            k = os.splice(r, fd, n - moved, offset_dst=offset + moved, flags=os.SPLICE_F_MOVE)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            break
        if not k:
            raise OSError(errno.EIO, "splice to %s wrote nothing" % fd)
        moved += k
    copied = moved
    while copied < n:
        k = os.readv(r, [buf[:min(len(buf), n - copied)]])
        _write_all(fd, buf[:k], offset + copied)
        copied += k
    return moved == n


class _Flusher:
    """Writes the file's data to disk while it downloads (``fdatasync`` now and then, in a thread of its own),
    so the flush before the rename into place has little left to do."""

    def __init__(self, fd, every=0.5):
        self.fd, self.every = fd, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.wait(self.every):
            try:
                os.fdatasync(self.fd)
            except (OSError, AttributeError):
                return

    def close(self):
        self.done.set()
        self.thread.join()


class _FileHasher:
    """sha256 of the file from ``start`` on, as it is written, in a thread of its own: it reads back what the
    download wrote, 1 MB at a time into one reused buffer (from the page cache: a copy that is cheap beside the
    hash, and hashlib releases the GIL). So the hash covers exactly the bytes in the file, and memory stays
    flat however far the hash falls behind."""

    def __init__(self, path, h, start):
        self.h = h
        self.f = open(path, "rb", buffering=0)
        self.f.seek(start)
        self.pos = self.end = start
        self.cv = threading.Condition()
        self.closed = False
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def advance(self, end):
        """The file now holds ``end`` bytes; wakes the thread once a whole buffer is waiting."""
        self.end = end
        if end - self.pos >= CHUNK:
            with self.cv:
                self.cv.notify()

    def _run(self):
        buf = memoryview(bytearray(CHUNK))
        try:
            while True:
                with self.cv:
                    while self.end - self.pos < CHUNK and not self.closed:
                        self.cv.wait(0.5)
                    end, closed = self.end, self.closed
                while self.pos < end:
                    k = self.f.readinto(buf[:min(CHUNK, end - self.pos)])
                    if not k:
                        raise OSError(errno.EIO, "the file ends at %d, %d bytes were written" % (self.pos, end))
                    self.h.update(buf[:k])
                    self.pos += k
                if closed and self.pos >= self.end:
                    return
        except Exception as e:  # noqa: BLE001 (the download reports it; a hash that stopped must not pass)
            self.error = e

    def close(self, end):
        with self.cv:
            self.end = end
            self.closed = True
            self.cv.notify()
        self.thread.join()
        self.f.close()


# --- list, rm, status, check --------------------------------------------------------------------


def folder_items(req, folder, paths):
    """[{name, size, path}] of what ComfyUI lists in ``folder``."""
    address = req.get("comfy_address") or "127.0.0.1:8188"
    items = None
    try:
        items = comfy_get(address, "/experiment/models/" + urllib.parse.quote(folder))
    except (OSError, ValueError, http.client.HTTPException):
        items = None
    out = []
    if isinstance(items, list):
        for it in items:
            if not isinstance(it, dict) or not it.get("name"):
                continue
            idx = it.get("pathIndex") or 0
            base = paths[idx] if 0 <= idx < len(paths) else (paths[0] if paths else "")
            out.append({"name": it["name"], "size": it.get("size"), "path": os.path.join(base, it["name"])})
        return out
    try:
        names = comfy_get(address, "/models/" + urllib.parse.quote(folder))
    except (OSError, ValueError, http.client.HTTPException):
        return out
    for name in names:
        for base in paths:
            p = os.path.join(base, name)
            if os.path.isfile(p):
                out.append({"name": name, "size": os.path.getsize(p), "path": p})
                break
    return out


def cmd_list(req):
    sd = state_dir(req)
    folders = comfy_folders(req, wait_s=req.get("comfy_wait_s", 0))
    only = req.get("folder")
    if only:
        only = canonical_folder(only, folders)
    models = []
    for folder in sorted(folders):
        if only and folder != only:
            continue
        for it in folder_items(req, folder, folders[folder]):
            rec = read_json(record_path(sd, it["path"]), {}) or {}
            row = {"folder": folder, "name": it["name"], "size": it["size"], "path": it["path"],
                   "worker": worker_view(it["path"], volume_dir(req))}
            if rec.get("url") and not rec.get("removed_at"):
                row.update({"url": rec.get("url"), "sha256": rec.get("sha256"), "pulled_at": rec.get("pulled_at"),
                            "verified": rec.get("verified")})
            models.append(row)
    return {"event": "result", "result": "ok", "models": models, "folders": folders}


def cmd_rm(req):
    sd = state_dir(req)
    folders = comfy_folders(req, wait_s=req.get("comfy_wait_s", 0))
    name = req["name"]
    # ComfyUI names a file in a subfolder "sub/name": that is allowed here, a way out of the folder is not.
    bad = check_name(name.replace("/", "_")) if not name.startswith("/") else "it is an absolute path"
    if bad:
        raise Fail("%r is not a model name: %s" % (name, bad), code=2)
    only = canonical_folder(req["folder"], folders) if req.get("folder") else None
    hits, names = [], []
    for folder in sorted(folders):
        if only and folder != only:
            continue
        for it in folder_items(req, folder, folders[folder]):
            names.append(it["name"])
            if it["name"] == name:
                hits.append((folder, it))
    if len(hits) > 1:
        raise Fail("%s is in several folders (%s): give --folder" % (name, ", ".join(f for f, _ in hits)), code=2)
    if not hits:
        known = False
        for folder in ([only] if only else sorted(folders)):
            for base in folders[folder]:
                rec = read_json(record_path(sd, os.path.join(base, name)), {}) or {}
                known = known or bool(rec.get("removed_at") or rec.get("url"))
        import difflib

        return {"event": "result", "result": "absent", "known": known,
                "nearest": difflib.get_close_matches(name, names, n=3, cutoff=0.5)}
    folder, it = hits[0]
    path = os.path.realpath(it["path"])
    shared, _link_dir = placement(folder, folders[folder], volume_dir(req))
    bases = list(folders[folder]) + ([shared] if shared else [])
    if not any(path.startswith(os.path.realpath(b).rstrip("/") + "/") for b in bases):
        raise Fail("%s is outside ComfyUI's %s folders; not removed" % (it["path"], folder))
    size = os.path.getsize(path)
    os.remove(path)
    if os.path.islink(it["path"]):
        os.remove(it["path"])  # ComfyUI's link to the file on the volume
    rp = record_path(sd, it["path"])
    rec = read_json(rp, {}) or {}
    rec.update({"path": it["path"], "name": name, "folder": folder, "removed_at": now()})
    write_json(rp, rec)
    return {"event": "result", "result": "changed", "folder": folder, "name": name, "path": it["path"], "size": size}


def cmd_status(req):
    sd = state_dir(req)
    jobs = []
    t = now()
    base = os.path.join(sd, "jobs")
    for key in sorted(os.listdir(base)):
        jobdir = os.path.join(base, key)
        job = read_json(os.path.join(jobdir, "job.json"))
        if not job:
            continue
        active = running(jobdir, job)
        ended = job.get("finished_at") or job.get("heartbeat") or job.get("queued_at") or 0
        if not active and t - ended > KEEP_JOBS_S:
            forget(jobdir, job)  # abandoned a week ago: its .part goes, a pull would start afresh
            continue
        row = public(job)
        row["running"] = active
        if not active and job.get("status") == "starting" and not job.get("run"):
            row["status"] = "not started"  # autopod went away (Ctrl-C) before the download began
        elif not active and job.get("status") in ("starting", "downloading", "verifying"):
            row["status"] = "stopped"  # its program ended (killed, or the pod stopped): a pull resumes it
        jobs.append(row)
    jobs.sort(key=lambda j: (not j["running"], -(j.get("started_at") or 0)))
    return {"event": "result", "result": "ok", "jobs": jobs}


def forget(jobdir, job):
    import shutil

    part = job.get("part")
    if part and os.path.basename(part).startswith(".") and part.endswith(".part"):
        try:
            os.remove(part)
        except OSError:
            pass
    shutil.rmtree(jobdir, ignore_errors=True)


def cmd_check(req):
    """For each declared model: there (ok), missing (what a pull would fetch, and its size), or a problem."""
    sd = state_dir(req)
    folders = comfy_folders(req)
    out = []
    for item in req.get("items") or []:
        row = {"url": item.get("url"), "folder": item.get("folder"), "name": item.get("name")}
        try:
            folder = canonical_folder(item["folder"], folders)
            facts = None
            name = item.get("name")
            if not name:
                facts = probe(item["url"], req.get("tokens"))
                name = facts.get("name_served") or url_name(item["url"])
            row["name"] = name
            directory, link_dir = placement(folder, folders[folder], volume_dir(req))
            path = os.path.join(directory, name)
            if not os.path.isfile(path) and link_dir and os.path.isfile(os.path.join(link_dir, name)):
                path = os.path.join(link_dir, name)  # pulled before the shared layout: a pull moves it
            row["path"] = path
            if os.path.isfile(path):
                rec = read_json(record_path(sd, path), {}) or {}
                st = os.stat(path)
                row.update(state="present", size=st.st_size, sha256=rec.get("sha256"))
                want = (item.get("sha256") or "").lower()
                if want and rec.get("sha256") and rec.get("mtime") == st.st_mtime and rec["sha256"] != want:
                    row.update(state="different", problem="sha256 %s, not %s" % (rec["sha256"][:16], want[:16]))
            else:
                facts = facts or probe(item["url"], req.get("tokens"))
                row.update(state="missing", size=facts.get("size") or facts.get("size_approx") or facts.get("length"))
        except Fail as e:
            row.update(state="error", problem=e.msg)
        out.append(row)
    return {"event": "result", "result": "ok", "items": out}


def main(argv, source=None):
    try:
        req = json.loads(sys.stdin.readline() or "{}")
    except ValueError:
        emit({"event": "result", "result": "failed", "code": 2, "error": "the request is not JSON"})
        return 0
    op = req.get("op")
    try:
        if op == "pull":
            doc = cmd_pull(req)
        elif op == "list":
            doc = cmd_list(req)
        elif op == "rm":
            doc = cmd_rm(req)
        elif op == "status":
            doc = cmd_status(req)
        elif op == "check":
            doc = cmd_check(req)
        elif op == "probe":
            doc = dict(probe(req["url"], req.get("tokens")), event="result", result="ok")
        else:
            doc = {"event": "result", "result": "failed", "code": 2, "error": "unknown operation %r" % op}
    except Fail as e:
        doc = {"event": "result", "result": "failed", "code": e.code, "error": e.msg}
    emit(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
