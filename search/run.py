"""Study runner: FLOP-budgeted TransXNet search with proxy training (same as `xnetspace search`).

    python search/run.py --space spaces/tiny_cpu.yaml --dataset digits --n-trials 20

Run `python search/run.py --help` for every option. Re-running the same command continues the
study (up to --n-trials in total); results go to runs/STUDY_NAME unless --out says otherwise.
"""
import typer

from xnetspace.cli import search

if __name__ == "__main__":
    typer.run(search)
