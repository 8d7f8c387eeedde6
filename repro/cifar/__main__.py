import sys

from repro.cifar.experiments import main

sys.exit(main())
