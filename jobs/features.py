"""spark-submit entry point: `spark-submit --py-files seglake.whl jobs/features.py --env prod [--as-of DATE]`."""
import sys

from seglake.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "features", *sys.argv[1:]]))
