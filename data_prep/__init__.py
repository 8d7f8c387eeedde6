"""ImageNet -> WebDataset shards and statistics; see docs/data_prep.md."""
import os
import sys


def interactive() -> bool:
    """Progress bars by default only on a terminal, and not in a Slurm job's log."""
    return sys.stderr.isatty() and "SLURM_JOB_ID" not in os.environ
