"""The ledger: every batch and prompt autopod submits, in SQLite under AUTOPOD_HOME.

It is what makes a render survive a disconnect: ``comfy.watch`` re-attaches to a batch,
``comfy.fetch`` downloads what finished, ``comfy.run --resume`` submits only what did not finish.
SQLite (the standard library's ``sqlite3``) in WAL mode with a busy timeout is safe under
several autopod processes at once; the schema evolves through an ordered list of named
migrations, recorded in ``_autopod_migrations`` (the model of simonw/llm's logs.db).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.errors import AutopodError, ConfigError, Conflict, UsageError
from ..core.paths import autopod_home
from ..core.state import Claim, Holder

FILE = "ledger.db"
BATCH_LOCK = "comfy-batch"
BUSY_TIMEOUT_MS = 30_000

# Prompt states. planned: not submitted yet; submitting: its id is recorded and the POST under way (it may
# or may not be on the server); queued/running: on the server; the rest are final. On a Serverless endpoint
# the job id comes only with /run's answer: unknown is a submit whose answer was lost (the job may exist).
FINAL = ("success", "error", "interrupted", "rejected", "cancelled")


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Statement by statement: ``executescript`` would commit the migration's transaction half way."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m001_initial(db: sqlite3.Connection) -> None:
    _script(db, """
    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        target_id TEXT,
        target_name TEXT,
        client_id TEXT NOT NULL,
        output_dir TEXT NOT NULL,
        template TEXT NOT NULL,
        options TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE prompts (
        batch_id TEXT NOT NULL REFERENCES batches(id),
        idx INTEGER NOT NULL,
        workflow TEXT NOT NULL,
        workflow_hash TEXT NOT NULL,
        prompt TEXT NOT NULL,
        prompt_hash TEXT NOT NULL,
        overrides TEXT NOT NULL DEFAULT '{}',
        seeds TEXT NOT NULL DEFAULT '{}',
        prompt_id TEXT UNIQUE,
        status TEXT NOT NULL DEFAULT 'planned',
        error TEXT,
        submitted_at REAL,
        started_at REAL,
        finished_at REAL,
        fetched_at REAL,
        PRIMARY KEY (batch_id, idx)
    );
    CREATE INDEX prompts_status ON prompts(status);
    CREATE TABLE outputs (
        prompt_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        filename TEXT NOT NULL,
        subfolder TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL,
        path TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        saved_at REAL NOT NULL,
        PRIMARY KEY (prompt_id, node_id, kind, filename, subfolder, type)
    );
    CREATE TABLE uploads (
        sha256 TEXT NOT NULL,
        target_id TEXT NOT NULL,
        name TEXT NOT NULL,
        subfolder TEXT NOT NULL DEFAULT '',
        type TEXT NOT NULL,
        uploaded_at REAL NOT NULL,
        PRIMARY KEY (sha256, target_id, subfolder, type)
    );
    """)


def _m002_prompt_job(db: sqlite3.Connection) -> None:
    """The ``{job}`` of the output template: the job file's name when the prompt came from one."""
    db.execute("ALTER TABLE prompts ADD COLUMN job TEXT")


def _m003_prompt_pod(db: sqlite3.Connection) -> None:
    """Which pod ran each prompt (a fleet spreads one batch over several), and how often it was given
    to a pod (a member taken out gives its unfinished prompts back)."""
    db.execute("ALTER TABLE prompts ADD COLUMN target_id TEXT")
    db.execute("ALTER TABLE prompts ADD COLUMN target_name TEXT")
    db.execute("ALTER TABLE prompts ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")


def _m004_prompt_node_paths(db: sqlite3.Connection) -> None:
    """Where each node inside a subgraph is (``{"10:5": "subgraph 'Upscale'"}``), for error lines."""
    db.execute("ALTER TABLE prompts ADD COLUMN node_paths TEXT NOT NULL DEFAULT '{}'")


def _m005_prompt_remote(db: sqlite3.Connection) -> None:
    """What a Serverless endpoint said of a prompt's job: RunPod's status, ``delayTime``, ``executionTime``
    and worker id, for the sidecar and ``comfy.jobs``."""
    db.execute("ALTER TABLE prompts ADD COLUMN remote TEXT NOT NULL DEFAULT '{}'")


MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("m001_initial", _m001_initial),
    ("m002_prompt_job", _m002_prompt_job),
    ("m003_prompt_pod", _m003_prompt_pod),
    ("m004_prompt_node_paths", _m004_prompt_node_paths),
    ("m005_prompt_remote", _m005_prompt_remote),
]


@dataclass
class PromptRow:
    batch_id: str
    idx: int
    workflow: str
    workflow_hash: str
    prompt: dict[str, Any]
    prompt_hash: str
    overrides: dict[str, Any]
    seeds: dict[str, Any]
    prompt_id: str | None
    status: str
    error: Any
    submitted_at: float | None
    started_at: float | None
    finished_at: float | None
    fetched_at: float | None
    job: str | None = None
    target_id: str | None = None  # the pod it was submitted to
    target_name: str | None = None
    attempts: int = 0
    node_paths: dict[str, str] = field(default_factory=dict)  # node id inside a subgraph -> where it is
    remote: dict[str, Any] = field(default_factory=dict)  # a Serverless job: status, delay/execution ms, worker

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass
class BatchRow:
    id: str
    name: str
    created_at: float
    target_id: str | None
    target_name: str | None
    client_id: str
    output_dir: str
    template: str
    options: dict[str, Any]


class Ledger:
    """``with Ledger.open() as led: ...``; every write is its own short transaction."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: Path | None = None) -> "Ledger":
        path = path or autopod_home() / FILE
        try:
            db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL stays consistent after a crash and skips an fsync per transaction; a
            # power cut may lose the last few updates, which --resume recovers from the server.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            path.chmod(0o600)
            led = cls(db, path)
            led._migrate()
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):  # busy, not damaged: nothing to move aside
                raise AutopodError(f"the ledger {path} is busy: another autopod process has held a write on it "
                                   f"for {BUSY_TIMEOUT_MS // 1000}s (is one suspended with Ctrl-Z? resume or end "
                                   f"it, then try again)") from None
            raise ConfigError(f"the ledger {path} cannot be used ({e}); move it aside to start a new one") from None
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"the ledger {path} cannot be used ({e}); move it aside to start a new one") from None
        return led

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue on the busy timeout, never fail)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        # Read first: opening an up-to-date ledger takes no write lock, so a process that holds one (a long
        # write, or one suspended with Ctrl-Z) does not keep every other autopod from reading the ledger.
        try:
            done = {r[0] for r in self.db.execute("SELECT name FROM _autopod_migrations")}
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            done = set()
        if {name for name, _ in MIGRATIONS} == done:
            return
        with self.tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS _autopod_migrations (name TEXT PRIMARY KEY, applied_at REAL)")
            done = {r[0] for r in db.execute("SELECT name FROM _autopod_migrations")}
            known = {name for name, _ in MIGRATIONS}
            if done - known:
                raise ConfigError(f"the ledger {self.path} was written by a newer autopod "
                                  f"(migrations {', '.join(sorted(done - known))}); upgrade autopod")
            for name, fn in MIGRATIONS:
                if name not in done:
                    fn(db)
                    db.execute("INSERT INTO _autopod_migrations VALUES (?, ?)", (name, time.time()))

    # -- batches ------------------------------------------------------------------------------------

    def new_batch(self, name: str, *, target_id: str | None, target_name: str | None, output_dir: str,
                  template: str, options: dict[str, Any], prompts: list[dict[str, Any]],
                  claim: Callable[[str], Any] | None = None) -> BatchRow:
        """Record a batch and its planned prompts (``workflow``, ``workflow_hash``, ``prompt``,
        ``prompt_hash``, ``overrides``, ``seeds``) in one transaction. ``claim(batch_id)`` runs before
        it commits: the process that makes a batch holds it before any other can see it."""
        client_id = secrets.token_hex(16)
        now = time.time()
        with self.tx() as db:
            for attempt in range(8):
                # Short ids people can type; parallel runs in the same second may draw the same one: draw again.
                batch_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2 if attempt < 4 else 4)
                try:
                    db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               (batch_id, name, now, target_id, target_name, client_id, output_dir, template,
                                json.dumps(options)))
                    break
                except sqlite3.IntegrityError:
                    if attempt == 7:
                        raise
            for i, p in enumerate(prompts):
                db.execute("INSERT INTO prompts (batch_id, idx, workflow, workflow_hash, prompt, prompt_hash, "
                           "overrides, seeds, job, node_paths) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (batch_id, i, p["workflow"], p["workflow_hash"], json.dumps(p["prompt"]),
                            p["prompt_hash"], json.dumps(p.get("overrides") or {}), json.dumps(p.get("seeds") or {}),
                            p.get("job"), json.dumps(p.get("node_paths") or {})))
            if claim is not None:
                claim(batch_id)
        return self.batch(batch_id)

    def set_options(self, batch_id: str, options: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute("UPDATE batches SET options = ? WHERE id = ?", (json.dumps(options), batch_id))

    def batch(self, batch_id: str) -> BatchRow:
        r = self.db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if r is None:
            raise UsageError(f"no batch {batch_id!r} in the ledger (see `autopod comfy.jobs`)")
        return BatchRow(**{**dict(r), "options": json.loads(r["options"] or "{}")})

    def batches(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT b.*, COUNT(p.idx) AS total, SUM(p.status = 'success') AS done, "
            "SUM(p.status IN ('error', 'rejected', 'interrupted', 'cancelled')) AS failed, "
            "SUM(p.status IN ('submitting', 'queued', 'running')) AS active, SUM(p.status = 'planned') AS planned, "
            "SUM(p.status = 'unknown') AS unknown "
            "FROM batches b LEFT JOIN prompts p ON p.batch_id = b.id GROUP BY b.id "
            "ORDER BY b.created_at DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def latest_batch(self) -> BatchRow | None:
        r = self.db.execute("SELECT id FROM batches ORDER BY created_at DESC LIMIT 1").fetchone()
        return self.batch(r["id"]) if r else None

    def find(self, ref: str) -> tuple[BatchRow, list[PromptRow]]:
        """A batch id (or a unique prefix of one), or a prompt id: the batch and the prompts meant."""
        r = self.db.execute("SELECT batch_id FROM prompts WHERE prompt_id = ?", (ref,)).fetchone()
        if r is not None:
            batch = self.batch(r["batch_id"])
            return batch, [p for p in self.prompts(batch.id) if p.prompt_id == ref]
        ids = [x["id"] for x in self.db.execute("SELECT id FROM batches WHERE id LIKE ? ORDER BY id",
                                                 (ref.replace("%", "").replace("_", "") + "%",))]
        if len(ids) > 1:
            raise UsageError(f"{ref!r} matches several batches: {', '.join(ids)}")
        if not ids:
            raise UsageError(f"no batch or prompt {ref!r} in the ledger (see `autopod comfy.jobs`)")
        return self.batch(ids[0]), self.prompts(ids[0])

    # -- prompts ------------------------------------------------------------------------------------

    def prompts(self, batch_id: str) -> list[PromptRow]:
        rows = self.db.execute("SELECT * FROM prompts WHERE batch_id = ? ORDER BY idx", (batch_id,)).fetchall()
        return [_prompt(r) for r in rows]

    def prompt(self, batch_id: str, idx: int) -> PromptRow:
        return _prompt(self.db.execute("SELECT * FROM prompts WHERE batch_id = ? AND idx = ?",
                                       (batch_id, idx)).fetchone())

    def update(self, batch_id: str, idx: int, **fields: Any) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k} = ?" for k in fields)
        vals = [json.dumps(v) if k in ("error", "prompt", "overrides", "seeds", "remote") and v is not None else v
                for k, v in fields.items()]
        with self.tx() as db:
            db.execute(f"UPDATE prompts SET {cols} WHERE batch_id = ? AND idx = ?", (*vals, batch_id, idx))

    def finish_fetch(self, row: PromptRow, unsaved: list[str], sidecar: Callable[[PromptRow], None]) -> None:
        """After a fetch of ``row``'s outputs: the files that could not be saved become its ``fetch`` error,
        which ``comfy.fetch`` finishes later; else, once, an earlier fetch error is dropped, its sidecar is
        written (``sidecar`` gets the row as it is now) and only then is it marked fetched."""
        final = self.prompt(row.batch_id, row.idx)
        error = {k: v for k, v in (final.error or {}).items() if k != "fetch"}
        if unsaved:
            self.update(row.batch_id, row.idx, error={**error, "fetch": unsaved})
        elif final.fetched_at is None:
            if "fetch" in (final.error or {}):
                self.update(row.batch_id, row.idx, error=error or None)
                final = self.prompt(row.batch_id, row.idx)
            sidecar(final)
            self.update(row.batch_id, row.idx, fetched_at=time.time())

    # -- outputs and uploads ------------------------------------------------------------------------

    def saved_outputs(self, prompt_id: str) -> dict[tuple[str, str, str, str, str], dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM outputs WHERE prompt_id = ?", (prompt_id,)).fetchall()
        return {(r["node_id"], r["kind"], r["filename"], r["subfolder"], r["type"]): dict(r) for r in rows}

    def add_output(self, prompt_id: str, node_id: str, kind: str, item: dict[str, Any], path: str, size: int,
                   sha256: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (prompt_id, node_id, kind, item["filename"], item.get("subfolder") or "",
                        item.get("type") or "output", path, size, sha256, time.time()))

    def upload_for(self, sha256: str, target_id: str) -> dict[str, Any] | None:
        r = self.db.execute("SELECT * FROM uploads WHERE sha256 = ? AND target_id = ? AND type = 'input'",
                            (sha256, target_id)).fetchone()
        return dict(r) if r else None

    def add_upload(self, sha256: str, target_id: str, answer: dict[str, Any]) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                       (sha256, target_id, answer["name"], answer.get("subfolder") or "",
                        answer.get("type") or "input", time.time()))


# -- who holds a batch ------------------------------------------------------------------------------


class BatchBusy(Conflict):
    """Another process holds the batch (exit 1); ``holder`` says which, and the JSON document too."""

    def __init__(self, batch_id: str, holder: Holder, advice: str):
        super().__init__(f"batch {batch_id} is held by {holder.describe()}; {advice}",
                         data={"batch": batch_id, "holder": holder.to_dict()})
        self.holder = holder


def try_hold(batch_id: str, command: str) -> Claim | Holder:
    """Hold batch ``batch_id`` for this process (the :class:`Claim`, to release), or learn who holds it.

    One process at a time holds a batch, and only it submits or fetches the batch's prompts:
    ``comfy.run`` from the moment it records the batch until it returns (also with ``--detach``),
    ``comfy.run --resume``, ``comfy.watch`` and ``comfy.fetch``. The lock goes with its process,
    even one killed with kill -9."""
    claim = Claim(BATCH_LOCK, batch_id)
    holder = claim.take(command)
    return claim if holder is None else holder


def hold(batch_id: str, command: str, *, advice: str | None = None) -> Claim:
    """:func:`try_hold`, or :class:`BatchBusy` naming the process that holds the batch."""
    got = try_hold(batch_id, command)
    if isinstance(got, Claim):
        return got
    stop = f"kill {got.pid}" if got.pid else "Ctrl-C where it runs"
    raise BatchBusy(batch_id, got, advice or f"run this again once it has ended (or stop it: {stop})")


def batch_holder(batch_id: str) -> Holder | None:
    """The process the batch's lock file names, without touching the lock (a hint: it may have ended)."""
    return Claim(BATCH_LOCK, batch_id).holder()


def _prompt(r: sqlite3.Row) -> PromptRow:
    d = dict(r)
    for k in ("prompt", "overrides", "seeds", "node_paths", "remote"):
        d[k] = json.loads(d[k] or "{}")
    d["error"] = json.loads(d["error"]) if d.get("error") else None
    return PromptRow(**d)
