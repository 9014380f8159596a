"""``python -m cltk.benchmark [--kernel K] [--out DIR] [--quick] [--device cuda]``: the same as ``cltk bench``."""
import argparse
import sys

from cltk.benchmark import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m cltk.benchmark", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
