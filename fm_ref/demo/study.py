"""The convergence study behind the demo's budgets (derivations/08-evaluation.md, section 8).

Each chosen row of ``fm_ref.demo.ROWS`` is trained at each budget, a separate run per
budget (a schedule of decreasing step size then decays within each run), on the demo's
data and with the demo's seeds, and evaluated as the demo evaluates it: the exact
held-out NLL, its standard error, and the paired gap to the true density where the data
has one in closed form (derivations/08-evaluation.md (EVAL.7)). A row reaches its plateau
when doubling its budget no longer lowers the gap by more than its standard error.

    python -m fm_ref.demo.study --rows i-cfm ot-cfm --steps 2000 4000 8000 16000

prints one line per run as it ends (row, steps, NLL ± se, gap ± se, training CPU seconds)
and, with ``--json FILE``, writes the records.
"""
import argparse
import json
import sys
import time

import numpy as np

__all__ = ["study", "main"]


def study(keys, budgets, data="8gaussians", seed=0, n_train=None, n_eval=None, log=print):
    """Train each row of ``keys`` at each budget of ``budgets``; a list of records.

    Parameters
    ----------
    keys : list of keys of ``fm_ref.demo.ROWS``
    budgets : list of int, training steps of the row itself (not the --steps value)
    data : a toy data set; seed : int (the demo's seed: the same data and row seeds)
    n_train, n_eval : int, default the demo's (20 000 and 2000)

    Returns
    -------
    list of dicts: key, name, steps, nll, nll_se, gap, gap_se, train_cpu_seconds
    """
    from .. import demo
    from ..distributions import make_toy
    from ..metrics import mean_and_stderr
    from .run import _truth

    unknown = [k for k in keys if k not in demo.ROWS]
    if unknown:
        raise ValueError(f"keys: expected keys of fm_ref.demo.ROWS ({', '.join(demo.ROWS)}), got {unknown}")
    n_train = demo.DEFAULTS["n_train"] if n_train is None else n_train
    n_eval = demo.DEFAULTS["n_eval"] if n_eval is None else n_eval
    rng_data = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])  # as the demo draws its data
    train = make_toy(data, n_train, rng_data)
    test = make_toy(data, n_eval, rng_data)
    _, true_lp = _truth(data, test)
    out = []
    for key in keys:
        row = demo.ROWS[key]
        for steps in budgets:
            rng = np.random.default_rng(demo._row_seeds(seed, key)[0])
            cpu = time.process_time()
            params, _ = row.train(train, int(steps), rng, None)
            cpu = time.process_time() - cpu
            log_p, _ = row.evaluate(params).log_prob(test)
            nll, se = mean_and_stderr(-log_p, "nll")
            gap, gap_se = mean_and_stderr(true_lp - log_p, "gap") if true_lp is not None else (None, None)
            rec = {"key": key, "name": row.name, "steps": int(steps), "nll": nll, "nll_se": se, "gap": gap,
                   "gap_se": gap_se, "train_cpu_seconds": cpu}
            out.append(rec)
            gap_text = f"   gap {gap:.3f} ± {gap_se:.3f}" if gap is not None else ""
            log(f"{row.name:<20s} {int(steps):>6d} steps   NLL {nll:.3f} ± {se:.3f}{gap_text}   ({cpu:.1f} CPU s)")
    return out


def main(argv=None):
    from .. import demo

    p = argparse.ArgumentParser(prog="python -m fm_ref.demo.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", required=True, choices=list(demo.ROWS), help="row keys")
    p.add_argument("--steps", nargs="+", type=int, required=True, help="training steps of each run")
    p.add_argument("--data", default="8gaussians")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the records to this file")
    args = p.parse_args(argv)
    from ..bench.cnf import blas_threads

    blas_threads(1)  # as in the demo's workers: one BLAS thread per process (the CPU seconds are one core's)
    if any(s < 1 for s in args.steps):
        p.error("--steps: expected positive integers")
    recs = study(args.rows, args.steps, args.data, args.seed, log=lambda m: (print(m), sys.stdout.flush()))
    if args.json:
        from .._io import atomic_write_text, finite_json

        atomic_write_text(args.json, json.dumps(finite_json(recs), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
