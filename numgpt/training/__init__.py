"""Training a GPT-2: token data, AdamW and its schedule, the loop, resumable state, data parallelism.

    data.py       text -> train.bin / val.bin (+ tokenizer, meta.json), random batches
    objective.py  what a step minimises: a loss function over a batch, and the set of parameters it trains
    optim.py      AdamW, the learning-rate schedule, gradient clipping; the Optimizer interface the step calls
    run.py        run setup: data, run folder, resume / fine-tune / scratch, options -> a Run ready to train
    loop.py       the training loop: the step, evaluation, logging, checkpoints, Ctrl-C
    state.py      resumable checkpoints (weights, moments, rng) written atomically
    comm.py       the communicator (rank, size, allreduce_sum, broadcast, barrier): SingleProcess, ThreadGroup
    mpi.py        its MPI backend (mpi4py, one process per rank), exact in rank order; the launcher check
    zero.py       ZeRO-1: AdamW's moments sharded over the ranks (whole tensors each), the same results
    parallel.py   a batch's rows split over ranks and threads, gradients summed over threads in a fixed order
    memory.py     glibc malloc told to keep freed memory while training (a context manager)
    lock.py       RUN/.lock: one training at a time per run folder (flock, released however the process ends)
"""

from .data import Dataset, load_dataset, prepare
from .loop import TrainConfig, TrainResult, train
from .optim import AdamWConfig
from .run import Run, setup_run
from .state import TrainState, load_train_checkpoint, new_state, save_train_checkpoint

__all__ = ["Dataset", "load_dataset", "prepare", "TrainConfig", "TrainResult", "train", "AdamWConfig", "Run", "setup_run",
           "TrainState", "load_train_checkpoint", "new_state", "save_train_checkpoint"]
