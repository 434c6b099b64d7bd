# Lets `python -m pytest` in this folder import `sluice_plugin` without installing it.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
