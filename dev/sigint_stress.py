"""Ctrl-C at random moments of `numgpt train --threads 2`: every run must exit 130 within 15 s.

    numgpt prepare input.txt --out /tmp/sig_data --vocab-size 1024
    python dev/sigint_stress.py /tmp/sig_data --trials 25

Before commit 7c3658c, 5 of 25 trials hung (a KeyboardInterrupt inside the thread sum's barrier left the
other thread waiting); after it, 0 of 25.
"""

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a folder made by numgpt prepare")
    ap.add_argument("--trials", type=int, default=25)
    args = ap.parse_args()
    hangs = failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        for trial in range(args.trials):
            shutil.rmtree(run, ignore_errors=True)
            proc = subprocess.Popen([sys.executable, "-m", "numgpt", "train", args.data, "--out", str(run),
                                     "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                                     "--batch-size", "4", "--max-iters", "100000", "--eval-interval", "200",
                                     "--eval-iters", "1", "--threads", "2"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(random.uniform(1.0, 3.0))
            proc.send_signal(signal.SIGINT)
            try:
                err = proc.communicate(timeout=15)[1]
                if proc.returncode != 130:
                    failures += 1
                    print(f"trial {trial}: exit {proc.returncode}: {err.strip().splitlines()[-1]}")
            except subprocess.TimeoutExpired:
                hangs += 1
                proc.kill()
                proc.communicate()
                print(f"trial {trial}: HANG")
    print(f"{args.trials} trials: {hangs} hung, {failures} exited otherwise than 130")
    return 1 if hangs or failures else 0


if __name__ == "__main__":
    sys.exit(main())
