"""``python -m timm_fcl.eval``: the robustness evaluation command (``timm_fcl.robustness.cli``)."""
import sys

from .robustness.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
