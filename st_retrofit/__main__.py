"""``python -m st_retrofit`` (also ``accelerate launch -m st_retrofit train ...``)."""

from __future__ import annotations

import sys

from st_retrofit.cli import main

sys.exit(main())
