"""Study runner: FLOP-budgeted TransXNet search with proxy training (same as `xnetspace search`).

    python search/run.py --space spaces/tiny_cpu.yaml --dataset digits --n-trials 20

Run `python search/run.py --help` for every option. Re-running the same command continues the
study (up to --n-trials in total); results go to runs/STUDY_NAME unless --out says otherwise.
"""

import sys

from xnetspace.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["search"]  # the `xnetspace search` command, with its exits (2, 130, 1 with a log)
    main()
