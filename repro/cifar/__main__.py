"""`python -m repro.cifar figure1 | lrn` (repro.cifar.experiments)."""
import sys

from repro.cifar.experiments import main, parser  # noqa: F401  (parser: the docs' commands are checked with it)

if __name__ == "__main__":
    sys.exit(main())
