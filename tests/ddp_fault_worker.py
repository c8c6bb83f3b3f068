"""train.py's main in one process of a torch.distributed job, with a fault in process 1 only (for
tests/test_train_correctness.py, which starts two of these as torchrun would: RANK, WORLD_SIZE, MASTER_*).

    python tests/ddp_fault_worker.py skip N TRAIN_FLAGS...   # process 1's N-th batch: no image loads
    python tests/ddp_fault_worker.py nan N TRAIN_FLAGS...    # process 1's N-th training loss: NaN
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402


def nth_call(function, n, fault, counts=lambda *args: True):
    """`function`, except that its n-th counted call (1-based) returns fault(result, *args) instead."""
    calls = []

    def wrapped(*args):
        result = function(*args)
        if counts(*args):
            calls.append(1)
            if len(calls) == n:
                return fault(result, *args)
        return result
    return wrapped


def main():
    fault, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    if os.environ["RANK"] == "1" and fault == "skip":  # what collate returns when every image of a batch failed
        train.collate_skipping = nth_call(train.collate_skipping, n, lambda batch, items: None)
    if os.environ["RANK"] == "1" and fault == "nan":  # training steps only: validation runs without gradients
        train.caption_loss = nth_call(train.caption_loss, n, lambda loss, *args: loss * float("nan"),
                                      counts=lambda *args: torch.is_grad_enabled())
    code = train.main(argv)
    # A process group left for the interpreter's exit can abort the process after the error was reported.
    print(f"process group still up at exit: {torch.distributed.is_initialized()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
