import copy

import pytest
import torch
from torch import nn

from repro.optim import PaperSGD, paper_update, param_groups

LRS = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]  # an lr drop in the middle
KERNELS = [dict(fused=True), dict(foreach=True), dict(foreach=False)]


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64),
             torch.randint(0, 2, (4,), generator=g)) for _ in LRS]


def grads_at(model, x, y):
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def train(model, opt, data, lrs):
    for (x, y), lr in zip(data, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def paper_rule(model, velocity, data, lrs):
    """The reference, paper_update, on each parameter (its v in `velocity`) with the
    paper's momentum and weight decay."""
    for (x, y), eps in zip(data, lrs):
        grads = grads_at(model, x, y)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(model.parameters(), grads)):
                w, velocity[i] = paper_update(p, velocity[i], g, eps, 0.9, 0.0005)
                p.copy_(w)


def test_paper_update_is_the_papers_rule():
    """Section 5 by hand, at w = 2, v = 0.5, grad = 3, eps = 0.1:
    v' = 0.9*0.5 - 0.0005*0.1*2 - 0.1*3 = 0.45 - 0.0001 - 0.3 = 0.1499, w' = w + v' = 2.1499."""
    def t(a):
        return torch.tensor([a], dtype=torch.float64)

    w, v, grad = t(2.0), t(0.5), t(3.0)
    w_next, v_next = paper_update(w, v, grad, 0.1, 0.9, 0.0005)
    torch.testing.assert_close(v_next, t(0.1499), rtol=0, atol=1e-15)
    torch.testing.assert_close(w_next, t(2.1499), rtol=0, atol=1e-15)
    for got, was in zip((w, v, grad), (2.0, 0.5, 3.0)):   # new tensors; the inputs stay as they were
        assert torch.equal(got, t(was))


@pytest.mark.parametrize("kernel", KERNELS)
def test_each_step_and_velocity_follow_the_reference_across_an_lr_change(kernel):
    """After every step, weights and the paper's v (-lr times torch's momentum buffer)
    equal paper_update's, the steps after the lr drop included: there v still holds the
    steps taken at the old lr, decayed by momentum."""
    data = batches()
    model, ref = small_model(), small_model()
    opt = PaperSGD(model.parameters(), lr=LRS[0], **kernel)
    velocity = [torch.zeros_like(p) for p in ref.parameters()]
    for step, lr in enumerate(LRS):
        train(model, opt, data[step:step + 1], [lr])
        paper_rule(ref, velocity, data[step:step + 1], [lr])
        for p, q, v in zip(model.parameters(), ref.parameters(), velocity):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(-lr * opt.state[p]["momentum_buffer"], v,
                                       rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_the_paper_update_rule(kernel):
    data = batches()
    model = small_model()
    opt = PaperSGD(model.parameters(), lr=LRS[0], **kernel)
    assert bool(opt.param_groups[0]["fused"]) == bool(kernel.get("fused"))
    got = train(model, opt, data, LRS)

    ref = small_model()
    paper_rule(ref, [torch.zeros_like(p) for p in ref.parameters()], data, LRS)
    for a, b in zip(got, ref.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-15)


def test_differs_from_torch_sgd_only_after_lr_change():
    data = batches()
    ours, theirs = small_model(), small_model()
    opt_ours = PaperSGD(ours.parameters(), lr=LRS[0])
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=LRS[0], momentum=0.9, weight_decay=5e-4)
    before_drop = LRS.index(0.01)
    a = train(ours, opt_ours, data[:before_drop], LRS)
    b = train(theirs, opt_theirs, data[:before_drop], LRS)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    a = train(ours, opt_ours, data[before_drop:], LRS[before_drop:])
    b = train(theirs, opt_theirs, data[before_drop:], LRS[before_drop:])
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) > 1e-6


def test_works_with_lr_scheduler():
    model = small_model()
    opt = PaperSGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    x, y = batches()[0]
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)


def test_state_dict_round_trip_continues_identically():
    data = batches()
    model = small_model()
    opt = PaperSGD(model.parameters(), lr=0.1)
    train(model, opt, data[:3], LRS[:3])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert len(saved_opt["state"]) == len(list(model.parameters()))     # not vacuous below
    assert all("momentum_buffer" in s for s in saved_opt["state"].values())
    expected = train(model, opt, data[3:], LRS[3:])

    resumed = small_model()
    resumed.load_state_dict(saved_model)
    resumed_opt = PaperSGD(resumed.parameters(), lr=0.5)
    resumed_opt.load_state_dict(saved_opt)
    got = train(resumed, resumed_opt, data[3:], LRS[3:])
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_param_groups_decay_biases():
    model = small_model()
    weights = [model[0].weight, model[3].weight]
    biases = [model[0].bias, model[3].bias]
    (all_params,) = param_groups(model, 5e-4, decay_biases=True)
    assert all_params["weight_decay"] == 5e-4 and len(all_params["params"]) == 4
    decayed, undecayed = param_groups(model, 5e-4, decay_biases=False)
    assert decayed["weight_decay"] == 5e-4 and undecayed["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for p in weights}
    assert {id(p) for p in undecayed["params"]} == {id(p) for p in biases}


def test_zero_decay_group_leaves_biases_undecayed():
    # With zero gradient, a decayed parameter shrinks and an undecayed one stays put.
    model = small_model()
    opt = PaperSGD(param_groups(model, 0.5, decay_biases=False), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    conv_w, conv_b = model[0].weight, model[0].bias
    torch.testing.assert_close(conv_w, before[0] * (1 - 0.5 * 0.1))
    assert torch.equal(conv_b, before[1])


def test_defaults_to_torchs_fused_kernel():
    assert PaperSGD(small_model().parameters(), lr=0.1).param_groups[0]["fused"] is True


def test_lr_change_while_a_parameter_has_no_gradient():
    """A parameter whose first gradient comes after the others' starts from v = 0; buffers
    of parameters that skip a step are rescaled with the rest: when they next step, they
    carry the paper's velocity, not one expressed at a stale lr."""
    a, b = nn.Linear(3, 2).double(), nn.Linear(3, 2).double()
    b.load_state_dict(a.state_dict())
    opt = PaperSGD(a.parameters(), lr=0.1)
    velocity = [torch.zeros_like(p) for p in b.parameters()]
    g = torch.Generator().manual_seed(0)
    for step, lr in enumerate([0.1, 0.1, 0.02, 0.02, 0.004]):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in a.parameters()]
        skip = step in (0, 2)   # the bias: its first gradient comes late; none at the lr change
        for p, gr in zip(a.parameters(), grads):
            p.grad = None if skip and p.dim() == 1 else gr.clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
        with torch.no_grad():                  # the paper's rule; a parameter with no gradient
            for i, (p, gr) in enumerate(zip(b.parameters(), grads)):   # does not move at all
                if not (skip and p.dim() == 1):
                    w, velocity[i] = paper_update(p, velocity[i], gr, lr, 0.9, 0.0005)
                    p.copy_(w)
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-15)


def test_lr_must_stay_positive():
    model = small_model()
    with pytest.raises(ValueError, match="lr > 0"):
        PaperSGD(model.parameters(), lr=0.0)
    opt = PaperSGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = 0.0
    with pytest.raises(ValueError, match="lr must stay > 0"):
        opt.step()


def test_takes_parameters_as_torch_optimizers_do():
    w, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    for params, sizes in [(w, [1]), ([w, b], [2]), (iter([w, b]), [2]),
                          ([{"params": w}, {"params": iter([b])}], [1, 1])]:
        opt = PaperSGD(params, lr=0.1)
        assert [len(g["params"]) for g in opt.param_groups] == sizes


@pytest.mark.parametrize("saved, resumed", [(True, False), (False, True)])
def test_resume_into_the_other_memory_format_continues_the_rule(saved, resumed):
    """train.channels_last may change on a resume: the buffers saved in one layout must
    meet parameters in the other (the fused kernel indexes both alike)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 5, 5, generator=g)
    grads = [torch.randn(w.shape, generator=g) for _ in range(3)]

    def run(saved_cl: bool, resumed_cl: bool) -> torch.Tensor:
        layout = lambda t, cl: t.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)  # noqa: E731
        p = nn.Parameter(layout(w.clone(), saved_cl))
        opt = PaperSGD([p], lr=0.01, fused=True)
        for grad in grads[:2]:
            p.grad = layout(grad.clone(), saved_cl)
            opt.step()
        q = nn.Parameter(layout(p.detach().clone(), resumed_cl))
        resumed_opt = PaperSGD([q], lr=0.01, fused=True)
        resumed_opt.load_state_dict(opt.state_dict())
        q.grad = layout(grads[2].clone(), resumed_cl)
        resumed_opt.step()
        return q.detach()

    torch.testing.assert_close(run(saved, resumed), run(False, False), rtol=1e-6, atol=1e-7)
