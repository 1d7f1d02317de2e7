"""Run a delivery worker: ``python worker.py [--burst]`` (the same as ``ingest worker``)."""

import sys

from ingest.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
