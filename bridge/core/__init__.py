"""What every stage uses: typed settings and the config file, logging, metrics objects
and readiness, protocol codes, the exception tree, the local time zone, process
lifelines, and the version guard of the library adapters.

Takes in: nothing from the other stages. Hands on: settings, codes, errors, metric
objects. May import: only ``bridge.core`` (it is the bottom layer).
"""

#: The sub-packages of ``bridge`` this one may import (tests/test_layout.py checks it).
MAY_IMPORT: tuple[str, ...] = ()
