"""An optional PyTorch reference for ``fm-ref bench``: the CFM step of a flow_matching-style
PyTorch loop with the same MLP (2+1 → 64 → 64 → 2, tanh, float64), batch, path (CondOT,
σ_min = 0) and optimiser (Adam, lr 1e-3). Imported only when torch is importable; fm_ref
itself never needs torch."""
import time

__all__ = ["available", "version", "make_step", "torch_cfm_rate"]


def available():
    """Whether torch can be imported here."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def version():
    """torch's version string (torch must be importable)."""
    import torch

    return torch.__version__


def make_step(data, threads=2, seed=0):
    """A function running one PyTorch CFM training step on ``data`` (array (N, 2)) with
    ``threads`` intra-op threads (its ``threads`` attribute; ``torch_cfm_rate`` sets them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x_data = torch.as_tensor(data, dtype=torch.float64)
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, 2)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        t = torch.rand(256, 1, generator=g, dtype=torch.float64)
        x_0 = torch.randn(256, 2, generator=g, dtype=torch.float64)
        x_1 = x_data[torch.randint(0, x_data.shape[0], (256,), generator=g)]
        x_t = (1 - t) * x_0 + t * x_1
        loss = ((net(torch.cat([x_t, t], 1)) - (x_1 - x_0)) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    step.threads = threads
    return step


def torch_cfm_rate(step, steps):
    """Steps per second of ``steps`` calls of ``step`` on its threads (after a warm-up of 10)."""
    import torch

    torch.set_num_threads(step.threads)
    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)
