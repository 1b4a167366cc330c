"""Diffusion as flow matching: five parameterisations, their losses and weights, training,
and the samplers (probability-flow ODE, the same-marginal SDE family, DDIM/DDPM).

Builds on ``fm_ref.paths`` (schedules, ``AffinePath.convert``) and ``fm_ref.marginal``
(closed-form targets), never the reverse. Derivation: derivations/09-diffusion.md (DIF.1)

- ``losses``: conditional and marginal regression targets of each kind, the weights
  w_k(t) that equal the CFM loss of the converted model, Monte Carlo and quadrature losses;
- ``train``: ``train_diffusion``, any kind and weight through ``fm_ref.train.adam``;
- ``predictors``: ``Predictor`` (a model or the closed form, in any kind), the
  probability-flow CNF of an MLP of any kind;
- ``sde``: the same-marginal SDE family and Euler–Maruyama;
- ``samplers``: DDIM (η = 0), DDPM ancestral (η = 1) and between.
"""
from .losses import (KINDS, cfm_weight, check_kind, conditional_loss, conditional_loss_quadrature,
                     conditional_regression_target, marginal_loss, marginal_loss_quadrature,
                     marginal_regression_target, per_sample_conditional_loss, per_sample_marginal_loss,
                     time_weight)
from .predictors import Predictor, as_velocity_model, probability_flow_cnf, velocity_coefficients
from .samplers import ddim_step, ddpm_step_mean_and_var, forward_kernel, posterior_coefficients, sample_ddim
from .sde import (REVERSE, check_grid, diffusion_coefficient, euler_maruyama, reverse_diffusion_g2,
                  same_marginal_drift, sample_sde, vp_sde_coefficients)
from .train import train_diffusion

__all__ = ["KINDS", "cfm_weight", "check_kind", "conditional_loss", "conditional_loss_quadrature",
           "conditional_regression_target", "marginal_loss", "marginal_loss_quadrature",
           "marginal_regression_target", "per_sample_conditional_loss", "per_sample_marginal_loss",
           "time_weight", "Predictor", "as_velocity_model", "probability_flow_cnf", "velocity_coefficients",
           "ddim_step", "ddpm_step_mean_and_var", "forward_kernel", "posterior_coefficients", "sample_ddim",
           "REVERSE", "check_grid", "diffusion_coefficient", "euler_maruyama", "reverse_diffusion_g2",
           "same_marginal_drift", "sample_sde", "vp_sde_coefficients", "train_diffusion"]
