"""Eight concurrent text clients against `marketsearch serve` on one workspace (the served code is whichever
`PYTHONPATH` names first: the server inherits it).

    [PYTHONPATH=TREE] .venv/bin/python -m bench.compare_concurrency WORKSPACE OUT.json

The 100 `bench_service.text_queries` of the workspace, a 2 x 5 warm-up, then 8 clients x 40 requests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.bench_service import text_queries
from bench.http_load import free_port, run_concurrent_text, serving, summarize


def main() -> None:
    workspace, out_path = Path(sys.argv[1]), Path(sys.argv[2])
    bodies = text_queries(workspace, 100, seed=0)
    with serving(workspace, free_port(), log_path=out_path.with_suffix(".server.log")) as served:
        run_concurrent_text(served.url, bodies, 2, 5)
        samples, wall = run_concurrent_text(served.url, bodies, 8, 40)
    out = {**summarize(samples), "req_per_s": len(samples) / wall}
    print(json.dumps({k: v for k, v in out.items() if k not in ("errors", "error_examples")}))
    out_path.write_text(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
