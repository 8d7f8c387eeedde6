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
from repro.step import train_step

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


def resume_worker(rank, port, out):
    """Four ranks: three steps in one go, and the same three with the third in a fresh DDP
    (as a resumed process builds it), through the trainer's own place_model."""
    from pathlib import Path

    from repro.config import load_config
    from repro.distributed import DistContext
    from repro.placement import place_model
    from repro.step import build_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=4)
    torch.set_num_threads(1)
    cfg = load_config(Path(__file__).parents[1] / "configs" / "smoke.yaml",
                      ["model.num_classes=5", "data.crop_size=67", "optim.lr=0.001"])

    def placed(state=None):
        p = place_model(cfg, torch.device("cpu"), DistContext(rank, 4))
        opt = build_optimizer(cfg, p.model)
        if state:
            p.model.load_state_dict(state[0])
            opt.load_state_dict(state[1])
        return p, opt

    def step(p, opt, i):
        g = torch.Generator().manual_seed(10 * i + rank)
        torch.manual_seed(i)                                   # dropout
        x, y = torch.randn(4, 3, 67, 67, generator=g) * 50, torch.randint(0, 5, (4,), generator=g)
        train_step(p.net, opt, x, y, world=4, global_n=16)

    straight, resumed = placed(), placed()
    for i in range(3):
        step(*straight, i)
    for i in range(2):
        step(*resumed, i)
    resumed = placed((resumed[0].model.state_dict(), resumed[1].state_dict()))
    step(*resumed, 2)
    if rank == 0:
        torch.save([straight[0].model.state_dict(), resumed[0].model.state_dict()], out)
    dist.destroy_process_group()


def test_a_resumed_ddp_process_steps_bit_for_bit_like_the_run_it_resumes(tmp_path):
    """With 3 ranks or more the all-reduced sums depend on DDP's bucket layout, which DDP
    changes after a process's first backward: the trainer's DDP settles it before the
    first real step, so that a resumed process (whose first step is the run's third here)
    reduces like the uninterrupted one."""
    out = tmp_path / "weights.pt"
    mp.start_processes(resume_worker, args=(free_port(), str(out)), nprocs=4,
                       start_method="spawn")
    straight, resumed = torch.load(out)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
