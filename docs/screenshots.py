"""Screenshots of the MLflow UI for the guide's UI tour (docs/ui-tour.md), saved as docs/images/*.png,
and of Model Explorer showing an ``int8_mixed`` run's graph with its SNR overlay (docs/model-explorer.md).

From a fresh temporary directory it runs the quick start (the main job, then the default sweep on
the demo) into a sqlite store, starts ``mlflow ui`` on 127.0.0.1 and photographs the pages with
headless Chromium (Debian's ``/usr/bin/chromium``, driven by the ``playwright`` package; no browser
is downloaded). Run it from the repository root, in an environment with the project and its
``[docs]`` and ``[explorer]`` extras installed::

    python docs/screenshots.py                  # 2-4 minutes: the runs, then the pages
    python docs/screenshots.py --reuse /tmp/x   # reuse (or keep) a store in /tmp/x
    python docs/screenshots.py --model-explorer-only   # 1 minute: the int8_mixed run, then Model Explorer

Needs ``apt-get install chromium`` once. Nothing outside 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
MODEL_NAME = "digits-cnn"
EXPERIMENT_NAME = f"mlflow-tflite/{MODEL_NAME}"
VIEWPORT = {"width": 1440, "height": 900}
# int8_mixed on the digits demo at 8x8 px with a cosine bound plain int8 misses (tests/test_mixed.py), so
# the search keeps some layers in float; its own store, so the UI tour's runs table does not show it.
MIXED_CONVERT = ("convert", "--quant", "int8_mixed", "--input-size", "8", "--task", "fidelity",
                 "--min-cosine-similarity", "0.999991", "--no-register")
# Model Explorer's search for the run's first layer, kept in float (checked: it must select a node with
# float32 weights); its first result is that conv (node 0).
FLOAT_NODE_SEARCH = "conv2d/Conv2D"
# The runs table's extra columns: what a user compares variants by.
RUN_COLUMNS = ("accuracy_drop", "size_bytes", "gzip_size_bytes", "latency_ms_p50", "quant", "sparsity")

log = logging.getLogger("screenshots")


@dataclass(frozen=True)
class Targets:
    """What the pages show, found in the store after the runs.

    Attributes:
        experiment_id: the experiment ``mlflow-tflite/digits-cnn``.
        sweep_run_id: the sweep's parent run (tag ``mlflow_tflite.role=sweep``).
        best_run_id: the variant run the sweep chose (parent tag ``mlflow_tflite.best_run_id``).
        best_variant: its variant name, e.g. ``dynamic-s0-8px``.
        int8_run_id: the main job's run (an int8 variant with a per-tensor error table).
        champion_version: the registered model version holding the alias ``champion``.
    """

    experiment_id: str
    sweep_run_id: str
    best_run_id: str
    best_variant: str
    int8_run_id: str
    champion_version: str


def run_quick_start(workdir: Path, env: dict[str, str]) -> None:
    """The guide's quick start in ``workdir``: the main job (int8), then the default 12-variant sweep.

    Raises:
        RuntimeError: a command failed; the message names it and its log file.
    """
    common = ["--experiment-name", EXPERIMENT_NAME, "--env-manager", "local"]
    commands = {
        "main": ["mlflow", "run", str(REPO), "-P", "quant=int8", *common],
        "sweep": ["mlflow", "run", str(REPO), "-e", "sweep", *common],
    }
    for name, command in commands.items():
        log_file = workdir / f"{name}.log"
        log.info("running %s (log: %s)", " ".join(command), log_file)
        with log_file.open("w") as out:
            status = subprocess.run(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        if status != 0:
            raise RuntimeError(f"{' '.join(command)} failed with status {status}; see {log_file}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ui(store_uri: str, workdir: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """``mlflow ui`` on 127.0.0.1:``port`` in its own process group, once ``/health`` answers.

    Raises:
        RuntimeError: the server exited or did not answer within 180 s (its log is named).
    """
    log_file = (workdir / "ui.log").open("w")
    server = subprocess.Popen(
        ["mlflow", "ui", "--backend-store-uri", store_uri, "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with status {server.returncode}; see {workdir / 'ui.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    stop_ui(server)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within 180 s; see {workdir / 'ui.log'}")


def stop_ui(server: subprocess.Popen) -> None:
    """Stop the ``mlflow ui`` this script started (its process group: the server and its workers)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def find_targets(store_uri: str) -> Targets:
    """The experiment, runs and model version to photograph, read from the store.

    Raises:
        RuntimeError: something the quick start should have made is missing.
    """
    from mlflow import MlflowClient

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        raise RuntimeError(f"no experiment {EXPERIMENT_NAME!r} in {store_uri}; did the quick start run?")
    sweeps = client.search_runs([experiment.experiment_id], "tags.`mlflow_tflite.role` = 'sweep'",
                                order_by=["attributes.start_time DESC"])
    mains = client.search_runs([experiment.experiment_id], "params.quant = 'int8' and tags.`mlflow_tflite.role` = "
                               "'variant'", order_by=["attributes.start_time ASC"])
    if not sweeps or not mains:
        raise RuntimeError(f"the store {store_uri} lacks the quick start's sweep or main run")
    best_run_id = sweeps[0].data.tags.get("mlflow_tflite.best_run_id")
    if best_run_id is None:
        raise RuntimeError(f"the sweep run {sweeps[0].info.run_id} chose no variant; see its tags")
    champion = client.get_registered_model(MODEL_NAME).aliases.get("champion")
    return Targets(experiment.experiment_id, sweeps[0].info.run_id, best_run_id,
                   client.get_run(best_run_id).data.tags["mlflow_tflite.variant"], mains[0].info.run_id,
                   str(champion))


def open_page(page, url: str, text: str) -> None:
    """Load ``url`` afresh (a hash change alone can keep the last run's state), then :func:`settle`."""
    page.goto("about:blank")
    page.goto(url)
    settle(page, text)


def settle(page, text: str) -> None:
    """Wait until ``text`` shows, close MLflow's assistant panel, and let the page finish drawing."""
    page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=60_000)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    page.wait_for_timeout(1500)


def toggle_column(page, name: str) -> None:
    """Tick (or untick) the column ``name`` in the runs table's Columns list, reopening it if it closed.

    Raises:
        RuntimeError: the list shows no such column after three tries.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    node = page.locator("[data-testid=column-selector-tree] .du-bois-light-tree-treenode").filter(
        has_text=re.compile(f"^{re.escape(name)}$")).first
    for _ in range(3):
        search = page.get_by_placeholder("Search columns")
        if not search.is_visible():
            page.get_by_role("button", name="Columns", exact=True).click()
        search.fill(name)
        try:
            node.click(timeout=10_000)
            return
        except PlaywrightTimeout:
            search.fill("")
    raise RuntimeError(f"the runs table's Columns list shows no {name!r}")


def shoot_runs_table(page, base: str, targets: Targets) -> None:
    """The experiment's training runs: the sweep expanded, metric and param columns added."""
    open_page(page, f"{base}/#/experiments/{targets.experiment_id}/runs", "matching runs")
    for column in ("Dataset", "Source", *RUN_COLUMNS):  # Dataset and Source are on: this turns them off
        toggle_column(page, column)
    page.keyboard.press("Escape")
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    page.get_by_text(targets.best_variant, exact=True).first.wait_for(state="visible")
    page.wait_for_timeout(1000)
    page.screenshot(path=IMAGES / "runs-table.png")


def shoot_artifact(page, base: str, run_id: str, experiment_id: str, artifact: str, image: str) -> None:
    """A run's Artifacts tab with ``artifact`` open."""
    open_page(page, f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts", artifact)
    page.get_by_text(artifact, exact=True).first.click()
    page.wait_for_timeout(2500)
    page.screenshot(path=IMAGES / image)


def shoot_pages(base: str, targets: Targets, debug: Path) -> list[Path]:
    """Every page of the tour, photographed into :data:`IMAGES`; returns the files written.

    A page that fails is photographed to ``debug/failed-page.png`` first.
    """
    from playwright.sync_api import sync_playwright

    IMAGES.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        try:
            shoot_runs_table(page, base, targets)
        except Exception:
            page.screenshot(path=debug / "failed-page.png")
            raise
        open_page(page, f"{base}/#/experiments/{targets.experiment_id}/runs/{targets.best_run_id}", "latency_ms_p50")
        page.screenshot(path=IMAGES / "variant-run.png")
        shoot_artifact(page, base, targets.int8_run_id, targets.experiment_id, "tensor_errors.png",
                       "variant-tensor-errors.png")
        shoot_artifact(page, base, targets.sweep_run_id, targets.experiment_id, "pareto.png", "sweep-pareto.png")
        shoot_artifact(page, base, targets.sweep_run_id, targets.experiment_id, "comparison.json",
                       "sweep-comparison.png")
        open_page(page, f"{base}/#/models/{MODEL_NAME}", "champion")
        page.screenshot(path=IMAGES / "registered-model.png")
        open_page(page, f"{base}/#/models/{MODEL_NAME}/versions/{targets.champion_version}", "champion")
        page.screenshot(path=IMAGES / "champion-version.png")
        browser.close()
    return sorted(IMAGES.glob("*.png"))


def mixed_run(workdir: Path, env: dict[str, str]) -> str:
    """The id of an ``int8_mixed`` run in ``workdir/explorer/mlflow.db``, converted there if missing.

    Raises:
        RuntimeError: the conversion failed or printed no run id (its log is named).
    """
    from mlflow import MlflowClient

    folder = workdir / "explorer"
    folder.mkdir(exist_ok=True)
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder.resolve() / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    if (folder / "mlflow.db").exists():
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   "params.quant = 'int8_mixed' and attributes.status = 'FINISHED'")
        if found:
            return found[0].info.run_id
    log_file = folder / "convert.log"
    log.info("running mlflow-tflite %s (log: %s)", " ".join(MIXED_CONVERT), log_file)
    with log_file.open("w") as out:
        subprocess.run([sys.executable, "-m", "mlflow_tflite.cli", *MIXED_CONVERT], cwd=folder, env=env, stdout=out,
                       stderr=subprocess.STDOUT)
    match = re.search(r"^run (\w+) variant int8_mixed", log_file.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"the int8_mixed conversion printed no run; see {log_file}")
    return match.group(1)


def start_explorer(run_id: str, workdir: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``mlflow-tflite explore run_id`` on 127.0.0.1:``port``; returns it and the URL it prints.

    Raises:
        RuntimeError: it exited or printed no URL within 120 s (its log is named).
    """
    folder = workdir / "explorer"
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{folder.resolve() / 'mlflow.db'}", "PYTHONPATH": str(REPO),
           "PYTHONUNBUFFERED": "1"}
    log_file = folder / "explore.log"
    with log_file.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow_tflite.cli", "explore", run_id, "--port", str(port),
                                   "--no-browser"], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        urls = [line for line in log_file.read_text().splitlines() if line.startswith(f"http://127.0.0.1:{port}/")]
        if urls:
            return server, urls[0]
        time.sleep(1)
    stop_explorer(server)
    raise RuntimeError(f"mlflow-tflite explore printed no URL within 120 s; see {log_file}")


def stop_explorer(server: subprocess.Popen) -> None:
    """Ctrl-C, as Model Explorer expects (it then returns and explore removes its downloads)."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def shoot_model_explorer(url: str, debug: Path) -> Path:
    """The graph with its layers expanded, coloured by SNR, and the first (float) conv selected.

    When the click selects no node with float32 weights, the page goes to ``debug/failed-page.png``.
    """
    from playwright.sync_api import sync_playwright

    image = IMAGES / "model-explorer-int8-mixed.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        page.get_by_text("SNR vs float (dB)").first.wait_for(state="visible", timeout=60_000)
        page.locator(".mat-icon-container.expand-all").first.click()
        page.mouse.move(700, 850)  # away from the toolbar: no tooltip in the picture
        page.wait_for_timeout(2000)
        search = page.get_by_placeholder("Search nodes/layers by regex")
        search.fill(FLOAT_NODE_SEARCH)
        page.get_by_text("Alt+Click to locate and select node").wait_for(state="visible")
        page.get_by_text("conv_2d", exact=True).first.click(modifiers=["Alt"])  # locate and select
        search.fill("")
        page.mouse.move(700, 850)
        try:
            # the selected node's float weights in its info panel (hidden copies of the text exist too)
            page.locator("text=float32[32,3,3,1] >> visible=true").first.wait_for(state="visible", timeout=10_000)
        except Exception:
            page.screenshot(path=debug / "failed-page.png")
            raise
        page.wait_for_timeout(1500)
        page.screenshot(path=image)
        browser.close()
    return image


def model_explorer_screenshot(workdir: Path, env: dict[str, str]) -> Path:
    """docs/images/model-explorer-int8-mixed.png: an int8_mixed run of the demo in ``mlflow-tflite explore``."""
    run_id = mixed_run(workdir, env)
    server, url = start_explorer(run_id, workdir, free_port(), env)
    try:
        return shoot_model_explorer(url, workdir)
    finally:
        stop_explorer(server)


def main() -> int:
    """Command line: run the quick start (unless ``--reuse`` finds a store), then photograph the UI."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", type=Path, help="directory whose mlflow.db to reuse (made there and kept if missing); "
                        "without it a temporary directory is used and deleted")
    parser.add_argument("--model-explorer-only", action="store_true",
                        help="only the Model Explorer screenshot (an int8_mixed run of its own)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(CHROMIUM).exists():
        log.error("Error: %s is missing; install it with: apt-get install chromium", CHROMIUM)
        return 1
    workdir = args.reuse or Path(tempfile.mkdtemp(prefix="mlflow-tflite-screenshots-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store_uri = f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    if args.model_explorer_only:
        log.info("wrote %s", model_explorer_screenshot(workdir, env).relative_to(REPO))
        if args.reuse is None:
            shutil.rmtree(workdir)
        return 0
    if not (workdir / "mlflow.db").exists():
        run_quick_start(workdir, env)
    targets = find_targets(store_uri)
    port = free_port()
    server = start_ui(store_uri, workdir, port, env)
    try:
        written = shoot_pages(f"http://127.0.0.1:{port}", targets, workdir)
    finally:
        stop_ui(server)
    written.append(model_explorer_screenshot(workdir, env))
    log.info("wrote %s", ", ".join(str(p.relative_to(REPO)) for p in written))
    if args.reuse is None:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
