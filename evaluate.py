"""Evaluate a checkpoint. Not implemented yet: exits with status 2."""

import sys

if __name__ == "__main__":
    sys.exit("evaluate.py: not implemented yet (evaluation is planned in a later issue)")
