"""``python -m bayes_pfl.compare``: ``bayes-pfl compare``, the comparison's command line.

An entry point, run by ``-m`` only and never imported by the package: the command line
(:mod:`bayes_pfl.cli.compare`) imports the comparison, the comparison does not import it.
"""

import sys

from bayes_pfl.cli.compare import compare_main

sys.exit(compare_main())
