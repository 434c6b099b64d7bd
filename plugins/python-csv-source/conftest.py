# `python -m pytest` here finds the SDK of this repository (a plugin made by
# `sluice plugin new --lang python` gets the same file, naming its SDK folder).
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "plugin-sdk", "python"))
sys.path.insert(0, HERE)
