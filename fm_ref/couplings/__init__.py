"""Couplings and bridges: pair-conditioned paths, couplings of two batches, their closed-form
marginals, and the change of schedule between affine paths.

- ``paths``: ``ConstantSigma`` (I-CFM, OT-CFM) and ``BrownianBridge`` (SB-CFM) conditioned on
  z = (x₀, x₁);
- ``plans``: independent, exact OT (assignment and linear program), entropic OT (log-domain
  Sinkhorn), and the training couplings that ``fm_ref.train.train_cfm`` accepts;
- ``closed_form``: ``PairMixture``, the finite Gaussian-mixture marginal p_t, u_t and score of
  any coupling of two point sets;
- ``gaussian``: population fields between Gaussians (independent, OT/Monge, entropic);
- ``schedule``: the time and scale change between affine paths;
- ``evaluate``: Euler sampling with k steps and the straightness of a field.

Derivation: derivations/10-couplings.md (CPL.1) to (CPL.17)
"""
from .closed_form import PairMixture
from .evaluate import euler_sample, path_energy, straightness
from .gaussian import (GaussianCouplingField, entropic_cross_covariance, monge_map, ot_cross_covariance,
                       wasserstein2_gaussian)
from .paths import PAIR_PATHS, BrownianBridge, ConstantSigma, PairPath
from .plans import (EntropicCoupling, ExactOTCoupling, IndependentCoupling, SinkhornResult, bridge_epsilon,
                    cost_matrix, independent_plan, ot_permutation, ot_plan, sample_pairs, sinkhorn)
from .schedule import change_schedule, schedule_map

__all__ = ["PairPath", "ConstantSigma", "BrownianBridge", "PAIR_PATHS", "cost_matrix", "independent_plan",
           "ot_permutation", "ot_plan", "sinkhorn", "SinkhornResult", "bridge_epsilon", "sample_pairs",
           "IndependentCoupling", "ExactOTCoupling", "EntropicCoupling", "PairMixture", "GaussianCouplingField",
           "monge_map", "ot_cross_covariance", "entropic_cross_covariance", "wasserstein2_gaussian",
           "schedule_map", "change_schedule", "euler_sample", "path_energy", "straightness"]
