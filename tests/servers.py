"""A team's shared tracking set-up for the tests: PostgreSQL + ``mlflow server`` with proxied artifacts.

Fixtures (import them into a test module: ``from servers import postgres, mlflow_server, ...``):

- ``postgres`` (session): a throw-away PostgreSQL cluster (Debian's ``postgresql`` binaries:
  ``initdb`` with trust auth into a temp dir, ``pg_ctl start`` on a free 127.0.0.1 port with its
  unix socket in that dir, ``createdb mlflow``); yields the SQLAlchemy URL
  ``postgresql+psycopg2://mlflow@127.0.0.1:<port>/mlflow`` (driver named: SQLAlchemy 2.1 reads a
  bare ``postgresql://`` as psycopg 3); stopped and removed at the end. PostgreSQL
  refuses to run as root, so under root the cluster belongs to the ``postgres`` account (made by
  the Debian package; ``nobody`` otherwise). Skipped, with the reason, only when the binaries
  are not installed (``apt-get install postgresql``; ``.ci/run`` installs them).
- ``tracking_server`` (session): a :class:`TrackingServer` (``mlflow server --backend-store-uri
  <postgres> --artifacts-destination <temp dir> --workers 1``) answering ``/health``; it can be
  stopped, killed and restarted on the same port and stores (:meth:`TrackingServer.restart`).
- ``mlflow_server`` (session): its URL, ``http://127.0.0.1:<port>``.
- ``team_server`` (function): the same URL, set as ``MLFLOW_TRACKING_URI`` for the test and the
  subprocesses it starts (monkeypatch), and as MLflow's tracking URI in the test process.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import requests

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
PG_USER = "mlflow"  # the cluster's superuser (trust auth on 127.0.0.1 and the socket; no password)
PG_DATABASE = "mlflow"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``createdb``: where ``initdb`` on PATH
    really lives (Debian only links some of them), else Debian's newest
    ``/usr/lib/postgresql/<version>/bin``; ``None`` when PostgreSQL is not installed."""
    candidates = [Path(p).resolve().parent for p in [shutil.which("initdb")] if p]
    candidates += sorted((Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
                         key=lambda d: [int(n) if n.isdigit() else 0 for n in d.parent.name.split(".")],
                         reverse=True)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "createdb")):
            return folder
    return None


def _unprivileged_account() -> pwd.struct_passwd | None:
    """``None`` when not root; else the account the cluster runs as (``postgres``, else ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root and neither a 'postgres' nor a 'nobody' account exists to own the "
                "PostgreSQL cluster (initdb refuses root): create one with `useradd -r postgres`")


class PostgresCluster:
    """A throw-away cluster in ``folder`` (data in ``folder/data``, log ``folder/postgres.log``)."""

    def __init__(self, bin_dir: Path, folder: Path):
        self.bin_dir, self.folder = bin_dir, folder
        self.data, self.log = folder / "data", folder / "postgres.log"
        self.account = _unprivileged_account()
        self.port = 0

    @property
    def url(self) -> str:
        # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, 2.0 to psycopg2.
        return f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{self.port}/{PG_DATABASE}"

    def _run(self, *args: str, as_owner: bool = True, timeout: float = 120) -> None:
        kwargs = {}
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        if as_owner and self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.folder)
        result = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.folder, env=env,
                                capture_output=True, text=True, timeout=timeout, **kwargs)
        if result.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n"
                               f"{result.stderr}\n{log}")

    def start(self) -> None:
        if self.account is not None:  # the folder must belong to the account the server runs as
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-sync")
        self.port = free_port()
        # fsync off: a test cluster is thrown away, never recovered after a crash.
        server_options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                          "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", server_options, "-w", "-t", "60", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, PG_DATABASE, as_owner=False)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL cluster; yields ``postgresql+psycopg2://mlflow@127.0.0.1:<port>/mlflow``."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
                    "`apt-get install postgresql` (Debian), as .ci/run does")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver is missing: pip install -e '.[test]'")
    # Not under pytest's tmp dir: that is private (0700) to the test user, and under root the
    # cluster belongs to another account.
    folder = Path(tempfile.mkdtemp(prefix="mlflow-tflite-pg-"))
    cluster = PostgresCluster(bin_dir, folder)
    try:
        cluster.start()
        yield cluster.url
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def wait_until_answering(url: str, process: subprocess.Popen, seconds: float) -> str | None:
    """Poll ``url`` until it answers 200; ``None`` then, else why not ("exited with 1", "did not answer ...")."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return None
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return f"did not answer {url} within {seconds:.0f} s"


class TrackingServer:
    """``mlflow server`` on PostgreSQL with proxied artifacts, as a team runs it; restartable.

    Its output goes to ``log`` (appended across restarts; shown when it does not come up).
    """

    def __init__(self, backend_uri: str, artifacts: Path, log: Path, port: int | None = None):
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_seconds: float = 180) -> None:
        """Start the server and wait until ``/health`` answers 200."""
        # No job runner: it starts 8 more processes (huey consumers for MLflow's GenAI jobs) that
        # nothing here uses, on a 2-core CI machine.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "a") as log:
            log.write(f"\n--- mlflow server start {time.strftime('%H:%M:%S')} ---\n")
            log.flush()
            self.process = subprocess.Popen(
                [MLFLOW, "server", "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", str(self.artifacts),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        problem = wait_until_answering(f"{self.url}/health", self.process, ready_seconds)
        if problem:
            self.stop(kill=True)
            raise RuntimeError(f"mlflow server {problem}:\n{self.tail()}")

    def stop(self, kill: bool = False, timeout: float = 30) -> None:
        """Terminate (or with ``kill``, SIGKILL at once, as a crash would) the server and its workers."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            try:  # its own session: the process group is the server and its uvicorn/gunicorn workers
                os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
        try:  # workers that outlived the main process (they share its group id)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._wait_port_free(timeout)

    def restart(self, kill: bool = False, ready_seconds: float = 180) -> None:
        """Stop (``kill``: SIGKILL, like a crashed server) and start again on the same port and stores."""
        self.stop(kill=kill)
        self.start(ready_seconds)

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text()[-chars:] if self.log.exists() else ""

    def _wait_port_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", self.port))
                    return
                except OSError:
                    time.sleep(0.2)


@pytest.fixture(scope="session")
def tracking_server(postgres, tmp_path_factory):
    """The running :class:`TrackingServer` (backend store ``postgres``, artifacts proxied to a temp dir)."""
    folder = tmp_path_factory.mktemp("tracking-server")
    artifacts = folder / "artifacts"
    artifacts.mkdir()
    server = TrackingServer(postgres, artifacts, folder / "server.log")
    try:
        server.start()
    except RuntimeError as error:
        server.stop(kill=True)
        pytest.fail(str(error))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tracking_server) -> str:
    """The shared tracking server's URL, ``http://127.0.0.1:<port>``."""
    return tracking_server.url


@pytest.fixture
def team_server(mlflow_server, monkeypatch):
    """``MLFLOW_TRACKING_URI`` = the shared server, for this test and the subprocesses it starts."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server
    mlflow.set_tracking_uri(None)


def subprocess_env(uri: str) -> dict[str, str]:
    """The test's environment for a subprocess: its venv first on PATH, tracking at ``uri``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
            "TF_CPP_MIN_LOG_LEVEL": "2"}
