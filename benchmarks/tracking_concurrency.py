"""N processes logging to one MLflow store at once, as N grid cells of stage 2 would: a run each, its params, and
`loss`, `grad_norm`, `learning_rate` at every step; then every run is checked: FINISHED, every (metric, step) present
once. Stores: the SQLite file the project uses by default, and a tracking server (scripts/tracking_server) started
here on loopback with SQLite behind it (`server`) or PostgreSQL (`postgres`: a throwaway cluster from Debian's
postgresql package, initdb'd in a temporary folder; needs psycopg2-binary in .venv).

    .venv/bin/python benchmarks/tracking_concurrency.py [--writers 2 4 8] [--steps 200] [--stores sqlite server postgres]

Prints one row per (store, N): wall seconds, runs FINISHED, points missing or duplicated, errors in the writers.
`--mlflow-alone` opens the store and the experiment as plain MLflow does, to see what the project's way prevents.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("loss", "grad_norm", "learning_rate")


def write(uri: str, experiment: str, writer: int, steps: int, errors, as_the_project: bool = True) -> None:
    import mlflow

    from sightbeyond.tracking.runs import ensure_experiment, open_store

    try:
        if as_the_project:  # as every stage opens the store and its experiment
            open_store(uri)
            mlflow.set_experiment(experiment_id=ensure_experiment(experiment))
        else:  # as MLflow alone does
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"cell-{writer}", tags={"stage": "stage2", "writer": str(writer)}):
            mlflow.log_params({"learning_rate": 2e-5, "writer": writer, "global_batch_size": 32})
            for step in range(steps):
                mlflow.log_metrics({m: step + writer / 10 for m in METRICS}, step=step, synchronous=True)
    except Exception:
        errors.put(f"writer {writer}: {traceback.format_exc().strip().splitlines()[-1]}")


def check(uri: str, experiment: str, writers: int, steps: int) -> dict:
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    elsewhere = [e.name for e in client.search_experiments() if e.name != experiment
                 and client.search_runs([e.experiment_id], "tags.stage = 'stage2'")]
    if elsewhere:
        raise RuntimeError(f"runs landed in other experiments: {elsewhere}")
    missing = duplicated = 0
    for run in runs:
        for metric in METRICS:
            seen = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
            missing += len(set(range(steps)) - set(seen))
            duplicated += len(seen) - len(set(seen))
    finished = sum(r.info.status == "FINISHED" for r in runs)
    return {"runs": len(runs), "finished": finished, "missing": missing + (writers - len(runs)) * steps * len(METRICS),
            "duplicated": duplicated}


def run_writers(uri: str, experiment: str, writers: int, steps: int, as_the_project: bool = True) -> dict:
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    procs = [context.Process(target=write, args=(uri, experiment, w, steps, errors, as_the_project)) for w in range(writers)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    failures = [f"writer {w}: exit code {p.exitcode}" for w, p in enumerate(procs) if p.exitcode]
    while not errors.empty():
        failures.append(errors.get())
    try:
        outcome = check(uri, experiment, writers, steps)
    except Exception as err:  # a store left half-migrated by racing writers cannot even be opened
        failures.append(f"store unreadable: {str(err).splitlines()[0][:120]}")
        outcome = {"runs": 0, "finished": 0, "missing": writers * steps * len(METRICS), "duplicated": 0}
    return {"wall_s": round(wall, 1), "errors": failures, **outcome}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """A PostgreSQL cluster of its own (initdb, trust on loopback) with an `mlflow` database, until the block ends.
    PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user Debian's package made."""

    def __init__(self):
        import glob
        import os

        self.port = free_port()
        [self.bin] = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [None]
        if self.bin is None:
            raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.uri = f"postgresql://postgres@127.0.0.1:{self.port}/mlflow"

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{Path(command[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def __enter__(self) -> PostgresCluster:
        import shutil

        # a folder of its own in the system's temporary folder: the caller's may be closed to the postgres user
        self.folder = Path(tempfile.mkdtemp(prefix="mlflow-pg-"))
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        data = str(self.folder / "data")
        self._run(f"{self.bin}/initdb", "-D", data, "-U", "postgres", "-A", "trust")
        self._run(f"{self.bin}/pg_ctl", "-D", data, "-l", str(self.folder / "postgres.log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200", "start")
        self._run(f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow")
        return self

    def __exit__(self, *exc) -> None:
        import shutil

        self._run(f"{self.bin}/pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


class TrackingServer:
    """scripts/tracking_server as a child process, on a free loopback port, until the block ends."""

    def __init__(self, folder: Path, backend: str | None = None):
        self.folder, self.port = Path(folder), free_port()
        self.backend = backend or f"sqlite:///{self.folder / 'server.db'}"
        self.uri = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TrackingServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = (self.folder / "server.log").open("w")
        bin_dir = str(Path(sys.executable).parent)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(Path.home())}
        self.proc = subprocess.Popen([str(ROOT / "scripts/tracking_server"), self.backend,
                                      str(self.folder / "artifacts"), str(self.port)], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"tracking server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server's gunicorn/uvicorn workers too
            self.proc.wait(timeout=60)
        self.log.close()


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--writers", type=int, nargs="+", default=[2, 4, 8])
    cli.add_argument("--steps", type=int, default=200)
    cli.add_argument("--stores", nargs="+", default=["sqlite", "server"], choices=["sqlite", "server", "postgres"])
    cli.add_argument("--mlflow-alone", action="store_true",
                     help="open the store and the experiment as MLflow alone does, not as the project's stages do")
    cli.add_argument("--json", type=Path)
    args = cli.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores:
            for n in args.writers:
                folder = Path(tmp) / f"{store}-{n}"
                if store == "sqlite":
                    folder.mkdir()
                    row = run_writers(f"sqlite:///{folder / 'mlflow.db'}", "concurrency", n, args.steps,
                                      as_the_project=not args.mlflow_alone)
                elif store == "server":
                    with TrackingServer(folder) as server:
                        row = run_writers(server.uri, "concurrency", n, args.steps, as_the_project=not args.mlflow_alone)
                else:
                    with PostgresCluster() as db, TrackingServer(folder, db.uri) as server:
                        row = run_writers(server.uri, "concurrency", n, args.steps, as_the_project=not args.mlflow_alone)
                rows.append({"store": store, "writers": n, "steps": args.steps, **row})
                print(f"{store:8s} N={n}: {row['wall_s']:6.1f} s, {row['finished']}/{n} FINISHED, "
                      f"{row['missing']} points missing, {row['duplicated']} duplicated, {len(row['errors'])} errors "
                      f"{row['errors'][:2] if row['errors'] else ''}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
