"""The cost of likelihood training, measured: held-out NLL against training wall-clock and
training NFE, and the time each model takes to reach a given NLL.

The demo keeps snapshots of the rows marked ``cost`` (``Row.cost``) during training, with
the wall-clock and the number of network evaluations (NFE) spent so far, and evaluates
the exact held-out NLL of each snapshot after training (so the evaluation's time is not
charged to training). A curve is a list of points {step, seconds, nfe, nll, nll_se}; the
last point is the trained model of the table (the same NLL, by construction).

Training NFE counts one network evaluation with its backward pass as one: a CFM step is
one (a batch of 256), an NF step one pass of the flow, a maximum-likelihood CNF step the
evaluations of its two ODE solves (the log-likelihood and the adjoint; a batch of 128).
"""
__all__ = ["time_to_reach", "cost_summary"]


def time_to_reach(curve, level):
    """The first point of ``curve`` with NLL ≤ ``level``, or None if it never gets there.

    A point is a checkpoint: the true first crossing lies between it and the previous
    checkpoint, so the time is an upper bound, finer as checkpoints are denser.
    """
    for point in curve:
        if point["nll"] <= level:
            return {k: v for k, v in point.items() if k != "params"}
    return None


def _fmt_ratio(a, b):
    return f"{a / b:.0f}x" if a / b >= 10 else f"{a / b:.1f}x"


def cost_summary(curves, mle_key="cnf", fm_key="cfm-condot"):
    """The measured cost comparison of a maximum-likelihood CNF and flow matching.

    Parameters
    ----------
    curves : dict key -> {'name', 'curve': [points]} (``fm_ref.demo.cost`` module doc)
    mle_key, fm_key : the two rows compared

    Returns
    -------
    dict with 'target' (the MLE CNF's best NLL within its budget), 'mle' and 'fm' (the
    points at which each first reaches it, or None), 'time_ratio' and 'nfe_ratio'
    (MLE / FM at the target; None if FM never reaches it), 'fm_final' (FM's final NLL),
    'mle_reaches_fm_final' (bool), and 'summary' (one sentence).
    """
    if mle_key not in curves or fm_key not in curves:
        return None
    mle, fm = curves[mle_key], curves[fm_key]
    target = min(p["nll"] for p in mle["curve"])
    at_mle, at_fm = time_to_reach(mle["curve"], target), time_to_reach(fm["curve"], target)
    fm_final = fm["curve"][-1]["nll"]
    reaches = time_to_reach(mle["curve"], fm_final)
    res = {"mle_key": mle_key, "fm_key": fm_key, "target": target, "mle": at_mle, "fm": at_fm,
           "time_ratio": None, "nfe_ratio": None, "fm_final": fm_final, "mle_reaches_fm_final": reaches is not None}
    last = mle["curve"][-1]
    if at_fm is None:
        text = (f"{fm['name']} does not reach the NLL {target:.3f} of {mle['name']} within its budget "
                f"({fm['curve'][-1]['seconds']:.1f} s)")
    else:
        res["time_ratio"] = at_mle["seconds"] / at_fm["seconds"]
        res["nfe_ratio"] = at_mle["nfe"] / at_fm["nfe"]
        text = (f"to reach a held-out NLL of {target:.3f} (the best of {mle['name']} in its budget), "
                f"{fm['name']} took {at_fm['seconds']:.1f} s and {at_fm['nfe']} network evaluations, "
                f"{mle['name']} {at_mle['seconds']:.1f} s and {at_mle['nfe']}: "
                f"{_fmt_ratio(at_mle['seconds'], at_fm['seconds'])} the time, "
                f"{_fmt_ratio(at_mle['nfe'], at_fm['nfe'])} the NFE")
    if reaches is None:
        text += (f"; within its budget ({last['step']} steps, {last['seconds']:.0f} s) {mle['name']} never reaches "
                 f"the {fm_final:.3f} of {fm['name']}")
    res["summary"] = text
    return res
