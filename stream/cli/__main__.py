"""`python -m ringwatch.stream.cli ...` is `ringwatch ...`."""

import sys

from .main import main

sys.exit(main())
