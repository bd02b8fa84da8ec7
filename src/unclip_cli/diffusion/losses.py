"""Training losses: MSE on a stage's prediction target, plus Improved DDPM's variational bound term for learned variance."""

import math

import torch
import torch.nn.functional as F

from unclip_cli.diffusion import gaussian as D
from unclip_cli.diffusion.spec import DiffusionSpec


def _gather(v: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_nll(x, mean, log_scale):
    """-log p(x) of 8-bit data x in [-1, 1] under a Gaussian discretised into 256 bins."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1 / 255))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return -log_probs


def hybrid_loss(schedule: D.Schedule, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                noise: torch.Tensor, vb_weight: float = 0.001, prediction: str = "epsilon") -> dict[str, torch.Tensor]:
    """L_simple + vb_weight * L_vb for a network predicting [eps or v-prediction, variance] (learned range).

    The VB term trains only the variance: the mean uses a detached prediction (Nichol & Dhariwal 2021).
    """
    C = x0.shape[1]
    pred, v = out[:, :C], out[:, C:]
    target = prediction_target(prediction, schedule, x0, t, noise)
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    betas, abar_all = schedule.betas, schedule.alphas_cumprod
    abar_prev_all = torch.cat([torch.ones(1), abar_all[:-1]])
    post_var_all = betas * (1 - abar_prev_all) / (1 - abar_all)
    post_logvar_all = torch.log(torch.cat([post_var_all[1:2], post_var_all[1:]]))  # clipped at t = 0
    n = x0.dim()
    abar, abar_prev, beta = (_gather(a, t, n) for a in (abar_all, abar_prev_all, betas))
    post_logvar = _gather(post_logvar_all, t, n)
    c0, ct = abar_prev**0.5 * beta / (1 - abar), (1 - beta) ** 0.5 * (1 - abar_prev) / (1 - abar)
    true_mean = c0 * x0 + ct * x_t
    if prediction == "epsilon":
        pred_x0 = ((x_t - (1 - abar) ** 0.5 * pred.detach()) / abar**0.5).clamp(-1, 1)
    else:
        pred_x0 = (abar**0.5 * x_t - (1 - abar) ** 0.5 * pred.detach()).clamp(-1, 1)
    pred_mean = c0 * pred_x0 + ct * x_t
    frac = (v + 1) / 2
    model_logvar = frac * torch.log(beta) + (1 - frac) * post_logvar
    kl = normal_kl(true_mean, post_logvar, pred_mean, model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    nll = discretized_gaussian_nll(x0, pred_mean, 0.5 * model_logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    # L_hybrid = L_simple + lambda * L_vb, where L_vb's one-term estimate is T * vb.
    loss = mse + vb_weight * schedule.num_timesteps * vb
    return {"mse": mse.mean(), "vb": vb.mean(), "loss": loss.mean()}


def prediction_target(prediction: str, schedule: D.Schedule, x0, t, noise) -> torch.Tensor:
    """What a network of this prediction type should output for x_t = q_sample(x0, t, noise)."""
    if prediction == "epsilon":
        return noise
    if prediction == "v":
        return D.v_target(schedule, x0, t, noise)
    return x0


def diffusion_loss(spec: DiffusionSpec, schedule: D.Schedule, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                   t: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loss a stage's spec implies: L_hybrid for a learned-range variance, else MSE on the prediction target."""
    if spec.learned_variance:
        if spec.prediction == "sample":
            raise ValueError("a learned-range variance is trained with eps or v prediction, not x0")
        return hybrid_loss(schedule, out, x0, x_t, t, noise, prediction=spec.prediction)
    return {"loss": F.mse_loss(out, prediction_target(spec.prediction, schedule, x0, t, noise))}
