"""Batch splitting over threads for ODE right-hand sides (``CNF.from_mlp(..., workers=k)``).

A right-hand side (x, t) -> (v, ∇·v) acts pointwise in the batch, so k slices of the
batch can be evaluated at once. NumPy releases the GIL inside ufunc loops and BLAS
calls, which is where an MLP evaluation spends its time, so k threads use k cores.

``SplitBatch`` keeps k − 1 worker threads for the life of the object and runs slice 0
on the calling thread. One evaluation of a 1000-point batch takes about a millisecond,
so the hand-over has to cost far less: the caller publishes the jobs, wakes the workers
(a condition variable they sleep on between solves) and polls for completion with
``time.sleep(0)``, which releases the GIL at once, instead of sleeping on a future
(whose wake-up is slow on a virtual machine with an idle core). Each worker writes its
slice straight into the output arrays; nothing is concatenated.

Results are bit-identical from call to call for a fixed k (the slices are fixed); they
equal the single-thread result to rounding (a matrix product's summation order can
depend on the number of rows). NumPy's floating-point error state is per thread: the
workers run under the caller's ``numpy.geterr()`` and ``numpy.geterrcall()``. An
exception in any slice is raised in the caller once every slice has finished (the first
one, slice 0 before the workers'); none is left behind to keep the object alive. A
worker thread that has died raises ``RuntimeError`` instead of a wait without end.
"""
import os
import threading
import time
import weakref

import numpy as onp

__all__ = ["SplitBatch"]


class _Channel:
    """What the caller and the workers share; the threads hold this, not the SplitBatch,
    so that dropping the SplitBatch stops them (weakref.finalize).

    Call number ``seq`` publishes ``jobs[k]``; worker k runs it and then sets
    ``done[k] = seq``, so a job left over from an interrupted call cannot be taken for
    the current one."""

    def __init__(self, workers):
        self.cond = threading.Condition()
        self.jobs = [None] * workers
        self.done = [0] * workers
        self.errors = [None] * workers
        self.seq = 0
        self.stop = False

    def serve(self, k):
        while True:
            with self.cond:
                while self.jobs[k] is None and not self.stop:
                    self.cond.wait()
                if self.stop:
                    return
                (seq, job), self.jobs[k] = self.jobs[k], None
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
                self.errors[k] = exc
            del job  # it refers to the SplitBatch, which must stay collectable
            self.done[k] = seq

    def close(self):
        with self.cond:
            self.stop = True
            self.cond.notify_all()

    def run(self, job, threads, name):
        """One call: job(k) on worker thread k for k ≥ 1 (``threads[k − 1]``) and job(0)
        here; wait for every worker, then raise the first error (every error is collected,
        none stays behind for a later call). The caller polls with ``time.sleep(0)``."""
        with self.cond:
            self.seq += 1
            seq = self.seq
            for k in range(1, len(self.jobs)):
                self.errors[k] = None
                self.jobs[k] = (seq, lambda k=k: job(k))
            self.cond.notify_all()
        errors = []
        try:
            job(0)
        except BaseException as exc:  # noqa: BLE001 - raised below, after the workers finish
            errors.append(exc)
        for k, thread in enumerate(threads, start=1):  # they write into the caller's arrays: wait
            while self.done[k] != seq:
                if not thread.is_alive():
                    raise RuntimeError(f"{name}: worker thread {k} has stopped")
                time.sleep(0)
            exc, self.errors[k] = self.errors[k], None
            if exc is not None:
                errors.append(exc)
        if errors:
            raise errors[0]


class SplitBatch:
    """(x, t) -> (v, div) evaluated on ``workers`` slices of the batch in parallel.

    Parameters
    ----------
    make_vdiv : callable () -> ((x, t) -> (v, div))
        Builds one evaluator per slice (each keeps its own work arrays); v has shape
        (m, d) and div shape (m,) for a slice x of shape (m, d).
    workers : int ≥ 2
        The number of slices; ``workers − 1`` threads are started.

    The returned arrays are work arrays of this object, overwritten by the next call
    (``CNF`` copies them at once). Not re-entrant: one caller at a time. In a process
    forked from the one that made it (whose threads do not survive the fork) it
    evaluates the slices one after another on the calling thread.
    """

    def __init__(self, make_vdiv, workers):
        self.workers = int(workers)
        if self.workers < 2:
            raise ValueError(f"workers: expected an int >= 2, got {workers!r}")
        self.parts = [make_vdiv() for _ in range(self.workers)]
        self.shape = None
        self._pid = os.getpid()
        self._channel = channel = _Channel(self.workers)
        self._threads = [threading.Thread(target=channel.serve, args=(k,), daemon=True,
                                          name=f"fm_ref-split-{k}") for k in range(1, self.workers)]
        for thread in self._threads:
            thread.start()
        weakref.finalize(self, channel.close)

    def _job(self, k, x, t, err, call):
        a, b = self.cuts[k], self.cuts[k + 1]
        with onp.errstate(call=call, **err):
            v, div = self.parts[k](x[a:b], t)
            self.v[a:b] = v
            self.div[a:b] = div

    def __call__(self, x, t):
        n, d = x.shape
        if n < 2 * self.workers:  # too small to split
            v, div = self.parts[0](x, t)
            return onp.array(v), onp.array(div)
        if x.shape != self.shape:
            self.shape, self.v, self.div = x.shape, onp.empty((n, d)), onp.empty(n)
            self.cuts = [(n * k) // self.workers for k in range(self.workers + 1)]
        err, call = onp.geterr(), onp.geterrcall()
        if os.getpid() != self._pid:  # a forked child: no worker threads here
            for k in range(self.workers):
                self._job(k, x, t, err, call)
            return self.v, self.div
        self._channel.run(lambda k: self._job(k, x, t, err, call), self._threads, "SplitBatch")
        return self.v, self.div
