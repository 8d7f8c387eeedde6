"""Two gloo processes with half a global batch each take the same step as one
process with the whole batch: the trainer's own train_step, DDP, PaperSGD, and
the loss normalisation for uneven last batches."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from repro.model import AlexNet
from repro.optim import PaperSGD, param_groups
from repro.train import train_step

# (rank 0 size, rank 1 size) per step: full halves, then an uneven last batch, then empty.
SPLITS = [(4, 4), (4, 4), (3, 2), (1, 0)]


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    for a, b in SPLITS:
        yield torch.randn(a + b, 3, 67, 67, generator=g) * 50, torch.randint(0, 5, (a + b,),
                                                                             generator=g)


def model():
    m = AlexNet(num_classes=5, input_size=67, dropout=0.0, seed=3, bias_value=0.1)
    return m, PaperSGD(param_groups(m, 5e-4, True), lr=0.01)


def worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    m, opt = model()
    net = torch.nn.parallel.DistributedDataParallel(m)
    for (x, y), sizes in zip(batches(), SPLITS):
        lo = 0 if rank == 0 else sizes[0]
        hi = lo + sizes[rank]
        train_step(net, opt, x[lo:hi], y[lo:hi], world=2, global_n=sum(sizes))
    if rank == 0:
        torch.save(m.state_dict(), out)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.start_processes(worker, args=(free_port(), str(out)), nprocs=2, start_method="spawn")
    torch.set_num_threads(1)
    single, opt = model()
    for x, y in batches():
        train_step(single, opt, x, y, world=1, global_n=len(y))
    ddp = torch.load(out)
    before = model()[0].state_dict()
    for k, v in single.state_dict().items():
        assert not torch.equal(v, before[k]), f"{k} did not train"
        torch.testing.assert_close(ddp[k], v, rtol=1e-4, atol=1e-6)
