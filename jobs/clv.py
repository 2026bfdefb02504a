"""spark-submit entry point: `spark-submit --py-files seglake.whl jobs/clv.py --env prod [--as-of DATE]`."""
import sys

from seglake.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "clv", *sys.argv[1:]]))
