"""Where the benchmarks find their data by default: $TIMM_FCL_DATA, else the ``shared/data`` folder beside the
repository (this project's checkout layout). Library code takes its data folders from its callers only."""
import os
from pathlib import Path


def shared_data_root() -> Path:
    return Path(os.environ.get("TIMM_FCL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
