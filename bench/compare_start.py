"""Start time of `marketsearch serve` for several code trees on one workspace, alternated round by round.

    .venv/bin/python -m bench.compare_start WORKSPACE TREE[,TREE...] ROUNDS

Each TREE is a folder holding the project's packages (this checkout, or `git archive REV | tar -x -C DIR`); its
server runs with TREE as the working directory, so TREE's packages are the ones imported. /health is polled
every 50 ms until 200, then one text search is sent and the server's resident memory read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.http_load import free_port


def start_once(workspace: Path, tree: str, log_path: Path) -> dict:
    port = free_port()
    command = [sys.executable, "-c", "from marketsearch.cli import app; app()", "serve", "--workspace",
               str(workspace), "--port", str(port), "--log-level", "info"]
    with open(log_path, "w") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
        try:
            took = None
            while time.monotonic() - started < 400 and process.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        took = time.monotonic() - started
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            search = httpx.post(f"http://127.0.0.1:{port}/search/text", json={"query": "wooden chair", "k": 5},
                                timeout=60).status_code if took else None
            status = Path(f"/proc/{process.pid}/status")
            rss = next((int(line.split()[1]) // 1024 for line in status.read_text().splitlines()
                        if line.startswith("VmRSS")), None) if status.exists() else None
        finally:
            process.terminate()
            process.wait(30)
    return {"health_s": round(took, 2) if took else None, "search": search, "rss_mb": rss,
            "load1": round(os.getloadavg()[0], 1)}


def main() -> None:
    workspace, trees, rounds = Path(sys.argv[1]).resolve(), sys.argv[2].split(","), int(sys.argv[3])
    results: dict[str, list] = {tree: [] for tree in trees}
    for round_ in range(rounds):
        for tree in trees:
            log_path = Path(f"/tmp/compare-start-{Path(tree).name}-{round_}.log")
            results[tree].append(start_once(workspace, tree, log_path))
            print(tree, results[tree][-1], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
