"""Diffusion math (unclip_cli.diffusion) and samplers (unclip_cli.samplers) against independent references."""

import math

import numpy as np
import pytest
import torch

from unclip_cli.diffusion import gaussian as D
from unclip_cli.diffusion import samplers as S
from unclip_cli.diffusion.spec import DiffusionSpec

T = 1000
SCHEDULE = D.cosine_schedule(T)


@pytest.fixture(autouse=True)
def _one_thread():
    """Speed only: these tensors are tiny, and two OpenMP threads on a busy small machine wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# --------------------------------------------------------------------------- schedule and respacing


def test_cosine_schedule_against_the_closed_form():
    """alphas_cumprod[t] (the product up to and including t) = f((t+1)/T) / f(0), f(s) = cos^2((s+0.008)/1.008 pi/2)."""
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
    got = SCHEDULE.alphas_cumprod.double().numpy()
    assert got.shape == (T,) and SCHEDULE.alphas_cumprod.dtype == torch.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert got[0] == pytest.approx(1 - 4.1e-5, abs=1e-6)  # the first step barely adds noise
    assert np.all(np.diff(got) < 0)


def test_betas_are_capped_and_consistent():
    betas = SCHEDULE.betas.double()
    assert betas.max().item() == pytest.approx(0.999, abs=1e-6)  # only the last beta reaches the cap
    assert (betas[:-1] < 0.999).all() and (betas > 0).all()
    np.testing.assert_allclose(torch.cumprod(1 - betas, 0).numpy(), SCHEDULE.alphas_cumprod.double().numpy(),
                               rtol=1e-4, atol=1e-9)


def test_respace():
    assert D.respace(1000, 7) == [999, 832, 666, 500, 333, 166, 0]
    expected = [int(t) for t in "999 957 916 874 832 791 749 708 666 624 583 541 500 458 416 375 333 291 250 208 "
                                "166 125 83 42 0".split()]
    assert D.respace(1000, 25) == expected
    assert D.respace(1000, 1) == [999]
    assert D.respace(1000, 1000) == list(range(999, -1, -1))
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            D.respace(1000, bad)


# --------------------------------------------------------------------------- closed forms


def test_x0_eps_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    for t in (0, 10, 500, 998):
        x_t = D.q_sample(SCHEDULE, x0, t, eps)
        torch.testing.assert_close(D.x0_from_eps(SCHEDULE, x_t, t, eps), x0, rtol=1e-4, atol=2e-4)
        torch.testing.assert_close(D.eps_from_x0(SCHEDULE, x_t, t, x0), eps, rtol=1e-4, atol=2e-4)
        # and the two maps invert each other on arbitrary inputs
        torch.testing.assert_close(D.eps_from_x0(SCHEDULE, x_t, t, D.x0_from_eps(SCHEDULE, x_t, t, eps)), eps,
                                   rtol=1e-4, atol=2e-4)


def test_q_sample_with_per_sample_timesteps():
    x0, eps = torch.ones(2, 3), torch.zeros(2, 3)
    out = D.q_sample(SCHEDULE, x0, torch.tensor([0, 999]), eps)
    abar = SCHEDULE.alphas_cumprod
    torch.testing.assert_close(out[0], torch.full((3,), abar[0].sqrt().item()))
    torch.testing.assert_close(out[1], torch.full((3,), abar[999].sqrt().item()))


def reference_posterior(t: int, prev: int, schedule: str = "float32"):
    """DDPM posterior q(x_prev | x_t, x0) of the respaced step t -> prev, in float64 (Ho et al. eq. 7).

    schedule="float32": from the schedule's float32 betas and alphas_cumprod (what the package, like Karlo's
    runtime, computes with); a step to t - 1 uses beta_t itself, a longer step 1 - abar_t / abar_prev.
    schedule="exact": the cosine schedule (betas capped at 0.999) computed in float64.
    """
    if schedule == "exact":
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
        abar = np.cumprod(1 - betas)
    else:
        betas, abar = SCHEDULE.betas.double().numpy(), SCHEDULE.alphas_cumprod.double().numpy()
    a_t = float(abar[t])
    a_prev = float(abar[prev]) if prev >= 0 else 1.0
    beta = float(betas[t]) if prev == t - 1 else 1 - a_t / a_prev
    c0 = math.sqrt(a_prev) * beta / (1 - a_t)
    ct = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
    var = (1 - a_prev) / (1 - a_t) * beta
    return c0, ct, var, beta


STEPS = [(999, 957), (999, 998), (500, 458), (500, 499), (42, 0), (10, 9), (1, 0), (0, -1), (999, -1)]


@pytest.mark.parametrize("t, prev", STEPS)
def test_posterior_mean(t, prev):
    g = torch.Generator().manual_seed(t)
    x0, x_t = torch.rand(4, 5, generator=g) * 2 - 1, torch.rand(4, 5, generator=g) * 2 - 1
    c0, ct, _, _ = reference_posterior(t, prev)
    expected = c0 * x0.double() + ct * x_t.double()
    got = D.posterior_mean(SCHEDULE, x0, x_t, t, prev)
    # float32 evaluation: e.g. at (999, 957) alpha = 1 - beta ~ 1e-6 loses digits (as in diffusers)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=5e-5)
    # and the whole chain (float32 schedule + formulas) stays close to the exact closed form
    c0, ct, _, _ = reference_posterior(t, prev, "exact")
    torch.testing.assert_close(got.double(), c0 * x0.double() + ct * x_t.double(), rtol=0, atol=2e-3)


@pytest.mark.parametrize("t, prev", [s for s in STEPS if s[1] >= 0])
def test_posterior_log_variance(t, prev):
    _, _, var, beta = reference_posterior(t, prev)
    got = D.posterior_log_variance(SCHEDULE, t, prev).item()
    assert got == pytest.approx(math.log(var), abs=1e-3)
    # learned range: v = -1 gives the posterior variance, v = 1 gives beta, v = 0 the geometric mean
    v = torch.tensor([-1.0, 0.0, 1.0])
    learned = D.posterior_log_variance(SCHEDULE, t, prev, v).double()
    expected = torch.tensor([math.log(var), (math.log(var) + math.log(beta)) / 2, math.log(beta)], dtype=torch.float64)
    torch.testing.assert_close(learned, expected, rtol=0, atol=1e-3)


def test_posterior_at_the_last_step_is_the_prediction():
    x0, x_t = torch.randn(2, 3), torch.randn(2, 3)
    # beta_0 / (1 - abar_0) is 1 exactly, 0.99947 in float32 (1 - abar_0 cancels); Karlo's runtime does the same
    torch.testing.assert_close(D.posterior_mean(SCHEDULE, x0, x_t, 0, -1), x0, rtol=1e-3, atol=0)
    assert D.posterior_log_variance(SCHEDULE, 0, -1).item() == pytest.approx(math.log(1e-20))  # clamped, finite


# --------------------------------------------------------------------------- samplers on Gaussian data


MU, SIGMA = 0.7, 0.3


def gaussian_denoiser(mu: float, s: float):
    """The exact x0 predictor E[x0 | x_t] for data x0 ~ N(mu, s^2)."""

    def denoise(x, t):
        a = SCHEDULE.alphas_cumprod[t].double()
        k = a.sqrt() * s * s / (a * s * s + 1 - a)
        return S.Prediction(x0=(mu + k * (x.double() - a.sqrt() * mu)).float())

    return denoise


def exact_moments(name: str, timesteps, mu: float, s: float) -> tuple[float, float]:
    """Mean and std of the sampler's output, propagated exactly (float64): every step is linear in x."""
    abar = SCHEDULE.alphas_cumprod.double().numpy()
    m, v = 0.0, 1.0
    for i, t in enumerate(timesteps):
        last = i + 1 == len(timesteps)
        prev = -1 if last else timesteps[i + 1]
        a_t, a_prev = abar[t], (abar[prev] if prev >= 0 else 1.0)
        k = math.sqrt(a_t) * s * s / (a_t * s * s + 1 - a_t)  # x0_hat = mu + k (x - sqrt(a_t) mu)
        if name == "ddpm":
            beta = 1 - a_t / a_prev
            c0 = math.sqrt(a_prev) * beta / (1 - a_t)
            ct = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
            A, B = c0 * k + ct, c0 * (mu - k * math.sqrt(a_t) * mu)
            noise = (1 - a_prev) / (1 - a_t) * beta if t > 0 else 0.0
        else:  # ddim, eta = 0: sqrt(a_prev) x0_hat + sqrt(1 - a_prev) (x - sqrt(a_t) x0_hat) / sqrt(1 - a_t)
            r = math.sqrt(1 - a_prev) / math.sqrt(1 - a_t)
            A = (math.sqrt(a_prev) - r * math.sqrt(a_t)) * k + r
            B = (math.sqrt(a_prev) - r * math.sqrt(a_t)) * (mu - k * math.sqrt(a_t) * mu)
            noise = 0.0
        m, v = A * m + B, A * A * v + noise
    return m, math.sqrt(v)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_sampler_reproduces_gaussian_data(name):
    timesteps = D.respace(T, 50)
    g = gens(0, 1, 2, 3)
    x = S.randn((4, 2000), g, "cpu", torch.float32)  # 8000 one-dimensional samples
    y = S.SAMPLERS[name](gaussian_denoiser(MU, SIGMA), x, SCHEDULE, timesteps, generators=g).double()
    mean, std = y.mean().item(), y.std().item()

    # 1. The samples have the moments the update rule implies (exact float64 propagation; 8000 samples).
    m, s = exact_moments(name, timesteps, MU, SIGMA)
    assert mean == pytest.approx(m, abs=0.015)
    assert std == pytest.approx(s, abs=0.01)
    # 2. Those moments are the data's: with 50 steps DDPM's "fixed small" variance runs a few % low.
    assert mean == pytest.approx(MU, abs=0.02)
    assert std == pytest.approx(SIGMA, rel=0.10 if name == "ddpm" else 0.05)
    assert m == pytest.approx(MU, abs=1e-3)


def test_ddpm_variance_converges_with_more_steps():
    """The 50-step shortfall in std is discretisation, not a bug: it shrinks as steps grow."""
    gaps = [abs(exact_moments("ddpm", D.respace(T, n), MU, SIGMA)[1] - SIGMA) for n in (25, 50, 250, 1000)]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.005


def test_same_generators_same_samples_other_seeds_different():
    timesteps = D.respace(T, 10)
    denoise = gaussian_denoiser(MU, SIGMA)

    def sample(name, *seeds, **kw):
        g = gens(*seeds)
        x = S.randn((len(seeds), 16), g, "cpu", torch.float32)
        return S.SAMPLERS[name](denoise, x, SCHEDULE, timesteps, generators=g, **kw)

    for name in ("ddpm", "ddim", "dpmpp_2m_sde"):
        a, b, c = sample(name, 5, 6), sample(name, 5, 6), sample(name, 5, 7)
        assert torch.equal(a, b)
        assert torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])  # sample 0 does not see sample 1's seed
    assert not torch.equal(sample("ddim", 5, eta=1.0), sample("ddim", 5, eta=0.0))  # eta > 0 draws noise


def test_randn_per_sample_generators():
    batch = S.randn((3, 2, 4), gens(10, 11, 12), "cpu", torch.float32)
    for i, seed in enumerate((10, 11, 12)):
        assert torch.equal(batch[i:i + 1], S.randn((1, 2, 4), gens(seed), "cpu", torch.float32))
    assert not torch.equal(batch[0], batch[1])
    assert S.randn((2, 3), gens(1, 2), "cpu", torch.float16).dtype == torch.float16
    with pytest.raises(ValueError):
        S.randn((3, 2), gens(1, 2), "cpu", torch.float32)


def test_callback_and_post_step():
    seen, posts = [], []
    timesteps = D.respace(T, 4)

    def post(x, prev):
        posts.append(prev)
        return x

    S.ddpm(gaussian_denoiser(0, 1), torch.zeros(1, 3), SCHEDULE, timesteps, generators=gens(0),
           callback=lambda i, t, x: seen.append((i, t)), post_step=post)
    assert seen == list(enumerate(timesteps))
    assert posts == timesteps[1:] + [-1]


# --------------------------------------------------------------------------- adapters


def test_guided():
    def net2(x2, t):
        u, c = x2.chunk(2)
        return torch.cat([u * 2.0 + t, c * -3.0 + 1.0])  # different uncond / cond outputs

    x = torch.randn(2, 6)
    cond = x * -3.0 + 1.0
    uncond = x * 2.0 + 5
    torch.testing.assert_close(S.guided(net2, 1.0)(x, 5), cond)
    torch.testing.assert_close(S.guided(net2, 0.0)(x, 5), uncond)
    torch.testing.assert_close(S.guided(net2, 4.0)(x, 5), uncond + 4.0 * (cond - uncond))
    # guided_channels: only the first k channels are guided, the rest (learned variance) come from cond
    out = S.guided(net2, 4.0, guided_channels=3)(x, 5)
    torch.testing.assert_close(out[:, :3], (uncond + 4.0 * (cond - uncond))[:, :3])
    assert torch.equal(out[:, 3:], cond[:, 3:])


def test_guidance_rescale_gives_each_row_the_conditional_std():
    """Guidance rescale (Lin et al.): rescale 1 scales each guided row to the std of its conditional row,
    keeping its direction; 0.5 is halfway; 0 is plain guidance, exactly; variance channels untouched."""
    g = torch.Generator().manual_seed(0)
    u_out, c_out = torch.randn(2, 6, 4, 4, generator=g), 0.3 * torch.randn(2, 6, 4, 4, generator=g)
    net2 = lambda x2, t: torch.cat([u_out, c_out])  # noqa: E731
    plain = S.guided(net2, 3.0, guided_channels=3)(torch.zeros(2, 6, 4, 4), 5)
    assert torch.equal(S.guided(net2, 3.0, guided_channels=3, rescale=0.0)(torch.zeros(2, 6, 4, 4), 5), plain)
    out = S.guided(net2, 3.0, guided_channels=3, rescale=1.0)(torch.zeros(2, 6, 4, 4), 5)
    for k in range(2):
        torch.testing.assert_close(out[k, :3].std(), c_out[k, :3].std())
        assert plain[k, :3].std() > 2 * c_out[k, :3].std()  # guidance alone made it much larger
        torch.testing.assert_close(out[k, :3] / out[k, :3].norm(), plain[k, :3] / plain[k, :3].norm())
    assert torch.equal(out[:, 3:], c_out[:, 3:])
    half = S.guided(net2, 3.0, guided_channels=3, rescale=0.5)(torch.zeros(2, 6, 4, 4), 5)
    torch.testing.assert_close(half[:, :3], (out[:, :3] + plain[:, :3]) / 2)
    # a vector stage (the prior: [B, D], every channel guided)
    vec = S.guided(lambda x2, t: torch.cat([u_out.flatten(1), c_out.flatten(1)]), 3.0, rescale=1.0)(torch.zeros(2, 96), 5)
    torch.testing.assert_close(vec.std(dim=1), c_out.flatten(1).std(dim=1))


def test_denoiser_epsilon_with_learned_variance_and_clamp():
    x = torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    r = torch.rand(2, 3, 4, 4) * 2 - 1
    t = 600
    spec = DiffusionSpec(num_timesteps=T, prediction="epsilon", variance="learned_range", guided_channels=3, clamp=1.0)
    d = S.Denoiser(lambda x_, t_: torch.cat([eps, r], 1), spec)
    pred = d(x, t)
    assert torch.equal(pred.variance, r)
    torch.testing.assert_close(pred.x0, D.x0_from_eps(SCHEDULE, x, t, eps).clamp(-1, 1))
    assert pred.x0.abs().max() <= 1.0

    sample = S.Denoiser(lambda x_, t_: x_ * 10, DiffusionSpec(num_timesteps=T, prediction="sample", clamp=None))
    p = sample(x, t)
    assert p.variance is None and torch.equal(p.x0, x * 10)


def test_denoiser_v_prediction_and_its_schedule():
    x, out = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    spec = DiffusionSpec(num_timesteps=T, prediction="v", clamp=None)
    d = S.Denoiser(lambda x_, t_: out, spec)
    assert d.schedule is D.schedule_of(spec) and torch.equal(d.schedule.betas, SCHEDULE.betas)
    torch.testing.assert_close(d(x, 900).x0, D.x0_from_v(SCHEDULE, x, 900, out))


@pytest.mark.parametrize("fields,match", [
    (dict(prediction="x0"), "prediction"), (dict(variance="fixed_large"), "variance"), (dict(schedule="linear"), "schedule"),
    (dict(clamp=0), "clamp"), (dict(num_timesteps=1), "num_timesteps"), (dict(variance="learned_range"), "guided_channels"),
])
def test_diffusion_spec_refuses_what_no_sampler_implements(fields, match):
    with pytest.raises(ValueError, match=match):
        DiffusionSpec(**fields)
    with pytest.raises(ValueError, match="unknown diffusion fields"):
        DiffusionSpec.from_dict({"prediction": "epsilon", "v": 1})


def _ode_error(name: str, steps: int, x: torch.Tensor, reference: torch.Tensor, spacing: str = "uniform") -> float:
    y = S.SAMPLERS[name](gaussian_denoiser(MU, SIGMA), x, SCHEDULE, D.spaced(SCHEDULE, steps, spacing),
                         generators=gens(0)).double()
    return float((y - reference).abs().max())


def test_spaced_timesteps():
    assert D.spaced(SCHEDULE, 25) == D.spaced(SCHEDULE, 25, "uniform") == D.respace(T, 25)
    assert D.spaced(SCHEDULE, 10, "logsnr") == [999, 879, 733, 490, 249, 108, 43, 14, 3, 0]
    abar = SCHEDULE.alphas_cumprod.double()
    log_snr = torch.log(abar / (1 - abar))
    for n in (1, 2, 3, 4, 7, 10, 25, 100, 500, 999, 1000):
        ts = D.spaced(SCHEDULE, n, "logsnr")
        assert len(ts) == n and ts[0] == T - 1 and all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] >= 0
        if n > 1:
            assert ts[-1] == 0
    # even in log-SNR after the first step: the gaps between neighbours' log-SNR are equal to within a timestep
    ts = D.spaced(SCHEDULE, 12, "logsnr")
    gaps = [float(log_snr[b] - log_snr[a]) for a, b in zip(ts[1:], ts[2:])]
    assert max(gaps) - min(gaps) < 0.6 and min(gaps) > 0
    small = D.cosine_schedule(10)
    assert D.spaced(small, 10, "logsnr") == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="unknown spacing"):
        D.spaced(SCHEDULE, 10, "karras")
    with pytest.raises(ValueError, match="steps must be"):
        D.spaced(SCHEDULE, 1001, "logsnr")


def test_logsnr_spacing_makes_dpmpp_2m_accurate_at_few_steps():
    """Against the 1000-step DDIM solution of the flow ODE on Gaussian data (max |error|), measured: DPM-Solver++(2M)
    with the log-SNR spacing 0.034 / 0.039 / 0.021 / 0.009 at 8 / 10 / 15 / 25 steps, against 0.47 / 0.45 / 0.33 /
    0.17 with the uniform spacing and DDIM's 0.34 / 0.27 / 0.18 / 0.11; DDIM itself gains nothing from it."""
    x = S.randn((1, 512), gens(0), "cpu", torch.float32)
    reference = S.ddim(gaussian_denoiser(MU, SIGMA), x, SCHEDULE, D.respace(T, 1000), generators=gens(0)).double()
    for n in (8, 10, 15, 25):
        logsnr = _ode_error("dpmpp_2m", n, x, reference, "logsnr")
        assert logsnr < 0.05
        assert logsnr < _ode_error("dpmpp_2m", n, x, reference) / 4
        assert logsnr < _ode_error("ddim", n, x, reference) / 4


def test_dpmpp_2m_is_a_second_order_solver_of_the_flow_ode():
    """On Gaussian data with the exact denoiser every deterministic sampler integrates the same probability flow
    ODE. Against the 1000-step DDIM solution, doubling the steps from 50 to 100 cuts DPM-Solver++(2M)'s error
    about 3.4x (second order) and DDIM's about 2x (first order). With our uniform-in-t spacing (Karlo's), 2M is
    NOT better than DDIM at fewer steps (8 steps: 0.47 vs 0.34; 20: 0.23 vs 0.13; 50: 0.051 vs 0.052): the
    spacing puts big log-SNR jumps at both ends, which the "logsnr" spacing removes (test above)."""
    x = S.randn((1, 512), gens(0), "cpu", torch.float32)
    reference = S.ddim(gaussian_denoiser(MU, SIGMA), x, SCHEDULE, D.respace(T, 1000), generators=gens(0)).double()
    dpm = [_ode_error("dpmpp_2m", n, x, reference) for n in (50, 100)]
    ddim = [_ode_error("ddim", n, x, reference) for n in (50, 100)]
    assert dpm[0] / dpm[1] > 3.0 and ddim[0] / ddim[1] < 2.5
    assert dpm[1] < ddim[1] * 0.7
    y = S.dpmpp_2m(gaussian_denoiser(MU, SIGMA), S.randn((4, 2000), gens(0, 1, 2, 3), "cpu", torch.float32), SCHEDULE,
                   D.respace(T, 50), generators=gens(0, 1, 2, 3)).double()
    # the data's moments (std 5.6% high at 50 steps, measured; DDIM is within 5%)
    assert y.mean().item() == pytest.approx(MU, abs=0.02) and y.std().item() == pytest.approx(SIGMA, rel=0.08)


def test_dpmpp_2m_sde_matches_diffusers_sde_dpmsolver_pp():
    """Our DPM-Solver++(2M) SDE is diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++",
    solver_order=2, midpoint), given the same timesteps, schedule and noise: the final samples agree to 3.6e-7."""
    DPMSolverMultistepScheduler = pytest.importorskip("diffusers").DPMSolverMultistepScheduler

    ts = D.spaced(SCHEDULE, 10, "logsnr")
    sch = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", solver_order=2,
                                      algorithm_type="sde-dpmsolver++", prediction_type="sample", final_sigmas_type="zero")
    sch.alphas_cumprod = SCHEDULE.alphas_cumprod.clone()  # ours, exactly (diffusers' betas are rounded differently)
    sch.alpha_t, sch.sigma_t = sch.alphas_cumprod.sqrt(), (1 - sch.alphas_cumprod).sqrt()
    sch.lambda_t = torch.log(sch.alpha_t) - torch.log(sch.sigma_t)
    sch.set_timesteps(timesteps=ts)
    assert sch.timesteps.tolist() == ts
    denoise = gaussian_denoiser(MU, SIGMA)
    g = gens(0, 1)
    ours = S.dpmpp_2m_sde(denoise, S.randn((2, 64), g, "cpu", torch.float32), SCHEDULE, ts, generators=g)
    g = gens(0, 1)
    y = S.randn((2, 64), g, "cpu", torch.float32).double()
    for t in sch.timesteps:  # the same noise, drawn in the same order (the last draw is multiplied by zero)
        x0 = denoise(y.float(), int(t)).x0.double()
        y = sch.step(x0, t, y, variance_noise=S.randn((2, 64), g, "cpu", torch.float32).double()).prev_sample
    assert (ours.double() - y).abs().max() < 1e-5
    assert not torch.equal(ours, S.dpmpp_2m(denoise, S.randn((2, 64), gens(0, 1), "cpu", torch.float32), SCHEDULE, ts,
                                            generators=gens(0, 1)))  # it does draw noise


@pytest.mark.parametrize("steps", [8, 12, 25])
def test_dpmpp_2m_sde_reproduces_gaussian_data_at_few_steps(steps):
    """With the log-SNR spacing the SDE solver's samples have the data's moments at few steps (std off by 2.2 /
    5.2 / 1.5% at 8 / 12 / 25 steps, measured), where DDPM's run 26-36% low at 8-12 steps and 14% at 25."""
    ts = D.spaced(SCHEDULE, steps, "logsnr")
    out = {}
    for name in ("dpmpp_2m_sde", "ddpm"):
        g = gens(0, 1, 2, 3)
        out[name] = S.SAMPLERS[name](gaussian_denoiser(MU, SIGMA), S.randn((4, 4000), g, "cpu", torch.float32),
                                     SCHEDULE, ts, generators=g).double()
    sde, ddpm = out["dpmpp_2m_sde"], out["ddpm"]
    assert sde.mean().item() == pytest.approx(MU, abs=0.01)
    assert sde.std().item() == pytest.approx(SIGMA, rel=0.08)
    assert abs(ddpm.std().item() / SIGMA - 1) > 0.12


def test_img2img_tail_starts_at_the_strengths_noise_level_whatever_the_spacing():
    """vary --strength s starts where the last round(s * steps) of Karlo's even-in-t steps start; with the log-SNR
    spacing the same number of steps then run evenly in log-SNR from there (not the last steps of the log-SNR list,
    which sit near t = 0: s = 0.5 of 16 would start at t = 129 instead of 466)."""
    abar = SCHEDULE.alphas_cumprod.double()
    log_snr = torch.log(abar / (1 - abar))
    for steps, s in ((16, 0.5), (16, 0.8), (25, 0.3), (10, 0.2)):
        uniform = D.respace(T, steps)[-max(1, round(steps * s)):]
        assert D.spaced_tail(SCHEDULE, steps, s, "uniform") == uniform  # as before
        ts = D.spaced_tail(SCHEDULE, steps, s, "logsnr")
        assert ts[0] == uniform[0] and len(ts) == len(uniform) and ts[-1] == 0
        assert all(a > b for a, b in zip(ts, ts[1:]))
        if len(ts) > 3:
            gaps = [float(log_snr[b] - log_snr[a]) for a, b in zip(ts[:-1], ts[1:])]
            assert max(gaps) - min(gaps) < 0.6 * (sum(gaps) / len(gaps))
    assert D.spaced_tail(SCHEDULE, 16, 1.0, "logsnr") == D.spaced(SCHEDULE, 16, "logsnr")
    assert D.spaced(SCHEDULE, 16, "logsnr")[-8] < 200  # what the plain tail would have started from
