"""A rank of `hyperdecode generate --parallel tp` that fails at its first forward: `raise` (an exception) or
`kill` (SIGKILL), on the rank given; the others run the command as usual. Run by test_tp.py under torchrun."""
import os
import signal
import sys

from hyperdecode.cli import main
from hyperdecode.engine.runner import ReferenceRunner

def run() -> int:
    mode, bad_rank, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if int(os.environ["RANK"]) == bad_rank:
        def fail(*_args):
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("a fault planted in this rank's forward")
        ReferenceRunner.forward = fail
    return main(argv)

if __name__ == "__main__":
    sys.exit(run())
