"""spark-submit entry point: `spark-submit --py-files seglake.whl jobs/consent.py --env prod [--withdraw X] [--grant X] [--at TIME]`."""
import sys

from seglake.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "consent", *sys.argv[1:]]))
