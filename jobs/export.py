"""spark-submit entry point: `spark-submit --py-files seglake.whl jobs/export.py --env prod [--as-of DATE]`."""
import sys

from seglake.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "export", *sys.argv[1:]]))
