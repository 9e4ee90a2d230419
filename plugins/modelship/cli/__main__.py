"""python -m modelship.cli: the `modelship` command, where no console script is installed (the Airflow image)."""

import sys

from modelship.cli import main

sys.exit(main())
