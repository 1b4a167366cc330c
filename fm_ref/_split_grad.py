"""A mini-batch loss and its gradient on slices of the batch in parallel threads
(``train_cfm(..., workers=k)``), the training counterpart of ``fm_ref._threads.SplitBatch``.

A mean loss over a batch of n points is the size-weighted mean of the slices' mean
losses, and so is its gradient: (1/n) Σ_i ℓ_i = Σ_k (n_k/n) · (1/n_k) Σ_{i ∈ slice k} ℓ_i.
Each slice runs the hand-written forward and backward pass of the MLP, whose time goes
to matrix products and ufuncs that release the GIL, so k threads can use k cores. The
hand-over is ``SplitBatch``'s: worker threads sleep on a condition variable between
calls and the caller polls for completion with ``time.sleep(0)``. The result equals the
single-thread one to rounding (the sums are grouped by slice).
"""
import os
import threading
import weakref

import numpy as onp

from ._threads import _Channel

__all__ = ["SplitGrad"]


class SplitGrad:
    """(params, x, t, target) -> (mean loss, gradient) over ``workers`` slices of the batch.

    Parameters
    ----------
    fn : callable (params, x (m, d), t (m,), target (m, d)) -> (loss, grads)
        A mean loss over the m points and its gradient, a list of (dW, db).
    workers : int ≥ 2

    Not re-entrant. In a process forked from the one that made it, the slices run one
    after another on the calling thread.
    """

    def __init__(self, fn, workers):
        self.workers = int(workers)
        if self.workers < 2:
            raise ValueError(f"workers: expected an int >= 2, got {workers!r}")
        self.fn = fn
        self._pid = os.getpid()
        self._channel = channel = _Channel(self.workers)
        self._threads = [threading.Thread(target=channel.serve, args=(k,), daemon=True, name=f"fm_ref-grad-{k}")
                         for k in range(1, self.workers)]
        for thread in self._threads:
            thread.start()
        weakref.finalize(self, channel.close)

    def _job(self, k, args, cuts, out, err, call):
        a, b = cuts[k], cuts[k + 1]
        with onp.errstate(call=call, **err):
            out[k] = self.fn(args[0], *(z[a:b] for z in args[1:]))

    def __call__(self, params, x, t, target):
        n = x.shape[0]
        if n < 2 * self.workers:
            return self.fn(params, x, t, target)
        cuts = [(n * k) // self.workers for k in range(self.workers + 1)]
        out, args = [None] * self.workers, (params, x, t, target)
        err, call = onp.geterr(), onp.geterrcall()
        if os.getpid() != self._pid:  # a forked child: no worker threads here
            for k in range(self.workers):
                self._job(k, args, cuts, out, err, call)
            return self._combine(out, cuts, n)
        self._channel.run(lambda k: self._job(k, args, cuts, out, err, call), self._threads, "SplitGrad")
        return self._combine(out, cuts, n)

    @staticmethod
    def _combine(out, cuts, n):
        w = [(cuts[k + 1] - cuts[k]) / n for k in range(len(out))]
        loss = sum(w_k * loss_k for w_k, (loss_k, _) in zip(w, out))
        grads = [tuple(sum(w_k * g[j][i] for w_k, (_, g) in zip(w, out)) for i in range(len(out[0][1][j])))
                 for j in range(len(out[0][1]))]
        return loss, grads
