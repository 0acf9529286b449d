"""``python -m timm_fcl.shards``: the shard-writing command (``timm_fcl.data.shards``)."""
import sys

from .data.shards import main
from .run.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("timm_fcl.shards", main))
