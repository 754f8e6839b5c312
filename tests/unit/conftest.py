"""Unit tests also import the sandbox package (at the collection root); make it importable
when ansible-test runs them from its copy of the collection."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
