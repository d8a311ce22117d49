"""`python -m keel sync FOLDER`: sends the spools a run left behind when the server was away."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ._http import Client, Refused, Unreachable


def sync(folder: Path, server: str | None, token: str | None) -> int:
    spools = sorted(folder.glob("spool-*.jsonl"))
    if not spools:
        print(f"nothing to send: no spool-*.jsonl in {folder}")
        return 0
    for spool in spools:
        meta_path = spool.with_suffix(".json")
        meta = json.loads(meta_path.read_text())
        client = Client(server or meta["server"], token)
        try:
            run_id = meta["run_id"]
            if run_id is None:
                run_id = client.call("POST", "/api/v1/runs", meta["spec"])["id"]
                meta["run_id"] = run_id
                meta_path.write_text(json.dumps(meta))
            lines = [json.loads(line) for line in spool.read_text().splitlines() if line.strip()]
            sent = duplicates = 0
            for at in range(0, len(lines), 1000):
                chunk = lines[at : at + 1000]
                by_branch: dict[int, list] = {}
                for c in chunk:
                    by_branch.setdefault(c["branch"], []).append(c["record"])
                for branch in sorted(by_branch):
                    reply = client.call("POST", f"/api/v1/runs/{run_id}/steps", {"branch": branch, "steps": by_branch[branch]})
                    sent += reply["accepted"]
                    duplicates += reply["duplicates"]
        except (Unreachable, Refused) as e:
            print(f"{spool}: {e}; kept", file=sys.stderr)
            return 1
        print(f"{spool}: run {run_id}, {sent} step(s) stored, {duplicates} already there")
        spool.unlink()
        meta_path.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keel")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sync", help="send the spools a run left behind")
    s.add_argument("folder", nargs="?", default=".keel", type=Path)
    s.add_argument("--server", default=os.environ.get("KEEL_SERVER"))
    s.add_argument("--token", default=os.environ.get("KEEL_TOKEN"))
    args = parser.parse_args(argv)
    return sync(args.folder, args.server, args.token)


if __name__ == "__main__":
    sys.exit(main())
