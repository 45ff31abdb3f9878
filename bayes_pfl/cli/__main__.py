"""``python -m bayes_pfl.cli``: the ``bayes-pfl`` command line."""

import sys

from bayes_pfl.cli import main

sys.exit(main())
