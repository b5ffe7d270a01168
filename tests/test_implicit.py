"""The fixed-point layer: implicit gradients against unrolled ones, gradcheck, phantom gradient, Jacobian
regularisation, divergence handling, shapes."""

import warnings

import pytest
import torch

from idp_agents.implicit import FixedPointConfig, FixedPointInfo, solve_fixed_point
from idp_agents.jacobian import jacobian_frobenius_estimate, spectral_radius_penalty
from idp_agents.training import FixedPointStats

DOUBLE = torch.float64


class TanhLayer(torch.nn.Module):
    """f(z) = tanh(W z + U x), contractive because W is scaled to spectral norm ``scale`` < 1."""

    def __init__(self, n: int = 6, d: int = 4, scale: float = 0.6, seed: int = 0, repeat: int = 1) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(n, n, generator=gen, dtype=DOUBLE)
        self.w = torch.nn.Parameter(scale * w / torch.linalg.matrix_norm(w, ord=2))
        self.u = torch.nn.Parameter(torch.randn(n, d, generator=gen, dtype=DOUBLE))
        x = torch.randn(3, d, generator=gen, dtype=DOUBLE).repeat(repeat, 1)
        self.x = x.requires_grad_()
        self.target = torch.randn(3, n, generator=gen, dtype=DOUBLE).repeat(repeat, 1)

    def step(self, z: torch.Tensor, ux: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.w.T + ux)

    def solve(self, config: FixedPointConfig, step: int | None = None) -> tuple[torch.Tensor, FixedPointInfo]:
        ux = self.x @ self.u.T
        return solve_fixed_point(lambda z: self.step(z, ux), torch.zeros_like(self.target), config, step=step)

    def gradients(self, config: FixedPointConfig) -> list[torch.Tensor]:
        z, _ = self.solve(config)
        loss = ((z - self.target) ** 2).sum()
        return list(torch.autograd.grad(loss, [self.w, self.u, self.x]))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def implicit_config(**changes) -> FixedPointConfig:
    settings = dict(mode="implicit", k_fwd=100, tol_fwd=1e-13, k_bwd=100, tol_bwd=1e-13)
    return FixedPointConfig(**(settings | changes))


@pytest.mark.parametrize("solver_bwd", ["anderson", "forward", "broyden"])
@pytest.mark.parametrize("solver_fwd", ["anderson", "broyden"])
def test_implicit_gradient_matches_converged_unrolled_gradient(solver_fwd, solver_bwd):
    layer = TanhLayer()
    expected = layer.gradients(FixedPointConfig(mode="unrolled", k_fwd=200))
    actual = layer.gradients(implicit_config(solver_fwd=solver_fwd, solver_bwd=solver_bwd))
    for name, a, e in zip(["W", "U", "x"], actual, expected, strict=True):
        assert relative_error(a, e) < 1e-3, name


def test_implicit_layer_passes_gradcheck():
    layer = TanhLayer(n=4, d=3)
    config = implicit_config(k_fwd=200, tol_fwd=1e-15, solver_fwd="forward", solver_bwd="forward")

    def fixed_point(w, u, x):
        ux = x @ u.T
        return solve_fixed_point(lambda z: torch.tanh(z @ w.T + ux), torch.zeros(3, 4, dtype=DOUBLE), config)[0]

    inputs = (layer.w.detach().clone().requires_grad_(), layer.u.detach().clone().requires_grad_(), layer.x)
    assert torch.autograd.gradcheck(fixed_point, inputs, atol=1e-6, rtol=1e-4)


def test_backward_solver_info_recorded_once_per_backward_and_repeatable():
    layer = TanhLayer()
    z, info = layer.solve(implicit_config())
    assert info.backward == [] and info.forward.converged.all()
    loss = ((z - layer.target) ** 2).sum()
    first = torch.autograd.grad(loss, layer.w, retain_graph=True)[0]
    assert len(info.backward) == 1 and info.backward[0].converged.all()
    second = torch.autograd.grad(loss, layer.w)[0]
    assert len(info.backward) == 2
    torch.testing.assert_close(first, second)


def test_forward_value_same_in_train_and_eval_and_matches_unrolled():
    layer = TanhLayer()
    config = FixedPointConfig(mode="implicit", k_fwd=12, solver_fwd="forward", tol_fwd=None)
    train, _ = layer.solve(config)
    with torch.no_grad():
        evaluated, info = layer.solve(config)
        unrolled, _ = layer.solve(FixedPointConfig(mode="unrolled", k_fwd=12))
    assert not evaluated.requires_grad and info.backward == []
    torch.testing.assert_close(train.detach(), evaluated)
    torch.testing.assert_close(evaluated, unrolled)


def test_unrolled_mode_has_autograd_through_every_step():
    layer = TanhLayer()
    z, info = layer.solve(FixedPointConfig(mode="unrolled", k_fwd=3))
    assert info.forward is None and info.jac_loss is None
    manual = torch.zeros_like(layer.target)
    for _ in range(3):
        manual = layer.step(manual, layer.x @ layer.u.T)
    torch.testing.assert_close(z, manual)
    assert z.grad_fn is not None


@pytest.mark.parametrize("steps, damping", [(1, 1.0), (1, 0.5), (5, 0.5)])
def test_phantom_gradient_points_like_implicit_gradient(steps, damping):
    layer = TanhLayer(scale=0.3)
    exact = torch.cat([g.flatten() for g in layer.gradients(implicit_config())])
    config = implicit_config(gradient="phantom", phantom_steps=steps, phantom_damping=damping)
    phantom = torch.cat([g.flatten() for g in layer.gradients(config)])
    assert torch.nn.functional.cosine_similarity(phantom, exact, dim=0) > 0.9


def test_phantom_gradient_with_many_undamped_steps_is_exact():
    layer = TanhLayer()
    exact = layer.gradients(implicit_config())
    phantom = layer.gradients(implicit_config(gradient="phantom", phantom_steps=150, phantom_damping=1.0))
    for a, e in zip(phantom, exact, strict=True):
        assert relative_error(a, e) < 1e-6


def exact_jacobian_penalty(layer: TanhLayer, z_star: torch.Tensor) -> torch.Tensor:
    ux = layer.x @ layer.u.T
    jacobian = torch.autograd.functional.jacobian(lambda z: layer.step(z, ux), z_star)  # (B, n, B, n)
    per_sample = torch.stack([jacobian[b, :, b, :].pow(2).sum() for b in range(z_star.shape[0])])
    return per_sample.mean() / z_star.shape[1]


@pytest.mark.parametrize("mode", ["implicit", "unrolled"])
def test_jacobian_regulariser_matches_exact_frobenius_norm_in_expectation(mode):
    torch.manual_seed(0)
    layer = TanhLayer()
    config = FixedPointConfig(mode=mode, k_fwd=40, jac_reg_weight=2.0)
    z_star, info = layer.solve(config)
    assert info.jac_loss is not None and info.jac_loss > 0
    (grad_w,) = torch.autograd.grad(info.jac_loss, layer.w)
    assert grad_w.abs().sum() > 0
    expected = 2.0 * exact_jacobian_penalty(layer, z_star.detach())
    # 500 copies of the batch average 500 probes per sample in one call
    estimate = TanhLayer(repeat=500).solve(config)[1].jac_loss.detach()
    assert abs(estimate - expected) < 0.05 * expected


def test_jacobian_regulariser_schedule_and_eval():
    layer = TanhLayer()
    config = FixedPointConfig(k_fwd=20, jac_reg_weight=1.0, jac_reg_every=3)
    computed = [layer.solve(config, step=i)[1].jac_loss is not None for i in range(6)]
    assert computed == [True, False, False, True, False, False]
    assert layer.solve(config, step=4)[1].jac_loss is None  # the step decides, not how often the config was used
    with pytest.raises(ValueError, match="give the solve the step's index"):
        layer.solve(config)
    with torch.no_grad():
        assert layer.solve(config, step=0)[1].jac_loss is None
    assert layer.solve(FixedPointConfig(k_fwd=20))[1].jac_loss is None


def test_jacobian_regulariser_descends():
    layer = TanhLayer(scale=0.9)
    config = FixedPointConfig(k_fwd=30, solver_fwd="forward", jac_reg_weight=1.0)
    optimiser = torch.optim.SGD([layer.w], lr=0.5)
    torch.manual_seed(1)
    before = exact_jacobian_penalty(layer, layer.solve(config)[0].detach())
    for _ in range(20):
        optimiser.zero_grad()
        layer.solve(config)[1].jac_loss.backward()
        optimiser.step()
    after = exact_jacobian_penalty(layer, layer.solve(config)[0].detach())
    assert after < 0.8 * before


@pytest.mark.parametrize("base", [0.0, 1.0])
def test_jacobian_regulariser_weighs_the_samples_that_missed_the_tolerance(base):
    # f(z) = a_b z + x_b: the estimate of ||J||_F^2 / n is exactly a_b^2 whatever the probe. Sample 0 (a = 0.1)
    # converges in 10 forward steps, sample 1 (a = 0.99) does not.
    a = torch.tensor([[0.1], [0.99]], dtype=DOUBLE, requires_grad=True)
    x = torch.ones(2, 3, dtype=DOUBLE)
    config = FixedPointConfig(
        k_fwd=10, solver_fwd="forward", tol_fwd=1e-6, jac_reg_weight=base, jac_reg_unconverged=3.0
    )
    with pytest.warns(RuntimeWarning, match="forward"):
        _, info = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config)
    assert info.forward.converged.tolist() == [True, False]
    expected = (base * 0.1**2 + 3.0 * 0.99**2) / 2
    assert info.jac_loss.item() == pytest.approx(expected)
    (grad,) = torch.autograd.grad(info.jac_loss, a)
    assert grad.flatten().tolist() == pytest.approx([base * 0.1, 3.0 * 0.99])


def test_jacobian_regulariser_only_on_unconverged_samples_is_skipped_when_all_converge():
    a = torch.tensor(0.1, dtype=DOUBLE, requires_grad=True)
    config = FixedPointConfig(k_fwd=50, solver_fwd="forward", tol_fwd=1e-6, jac_reg_unconverged=3.0)
    _, info = solve_fixed_point(lambda z: a * z + 1, torch.zeros(2, 3, dtype=DOUBLE), config)
    assert info.forward.converged.all() and info.jac_loss is None
    unrolled = FixedPointConfig(mode="unrolled", k_fwd=5, jac_reg_unconverged=3.0)  # no solve to miss
    assert solve_fixed_point(lambda z: a * z + 1, torch.zeros(2, 3, dtype=DOUBLE), unrolled)[1].jac_loss is None


@pytest.mark.parametrize("base", [0.0, 2.0])
def test_spectral_penalty_weighs_the_samples_that_missed_the_tolerance(base):
    # f(z) = a_b z + x_b has spectral radius a_b: sample 0 (a = 0.95) converges in 400 forward steps to 1e-6,
    # sample 1 (a = 0.995) does not; both lie above the target 0.9.
    a = torch.tensor([[0.95], [0.995]], dtype=DOUBLE, requires_grad=True)
    x = torch.ones(2, 3, dtype=DOUBLE)
    config = FixedPointConfig(
        k_fwd=400, solver_fwd="forward", tol_fwd=1e-6, spectral_reg_weight=base, spectral_reg_unconverged=30.0
    )
    with pytest.warns(RuntimeWarning, match="forward"):
        _, info = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config)
    assert info.forward.converged.tolist() == [True, False]
    assert info.spectral_estimate.tolist() == pytest.approx([0.95, 0.995])
    expected = (base * 0.05**2 + 30.0 * 0.095**2) / 2
    assert info.jac_loss.item() == pytest.approx(expected)
    (grad,) = torch.autograd.grad(info.jac_loss, a)
    assert grad.flatten().tolist() == pytest.approx([base * 0.05, 30.0 * 0.095])


def test_spectral_penalty_finds_each_samples_radius_and_only_penalises_above_the_target():
    # Symmetric maps with spectral radii 0.2, 0.85 and 1.3 (a real dominant eigenvalue, which power iteration finds)
    torch.manual_seed(0)
    q = torch.linalg.qr(torch.randn(3, 6, 6, dtype=DOUBLE)).Q
    spectrum = torch.linspace(-0.5, 1.0, 6, dtype=DOUBLE) * torch.tensor([0.2, 0.85, 1.3], dtype=DOUBLE)[:, None]
    a = (q @ torch.diag_embed(spectrum) @ q.transpose(1, 2)).requires_grad_()
    z = torch.randn(3, 6, dtype=DOUBLE, requires_grad=True)
    penalty, rho = spectral_radius_penalty(torch.einsum("bij,bj->bi", a, z), z, target=0.9, iterations=200)
    exact = torch.linalg.eigvals(a.detach()).abs().max(dim=1).values
    assert torch.allclose(rho, exact, rtol=1e-3)
    assert penalty.item() == pytest.approx(torch.relu(exact - 0.9).pow(2).mean().item(), rel=1e-3)
    (grad,) = torch.autograd.grad(penalty, a)
    below = exact < 0.9
    assert below.any() and (grad[below] == 0).all() and (grad[~below] != 0).any()


def test_spectral_penalty_pulls_a_repelling_step_into_a_contraction():
    # tanh(W z + U x) with ||W||_2 = 2.5: two of three fixed points repel (radius 1.21 and 1.24; Anderson finds
    # them anyway). The penalty alone, by gradient descent on W, brings every radius under 0.9.
    layer = TanhLayer(scale=2.5)
    config = FixedPointConfig(k_fwd=200, tol_fwd=1e-10, spectral_reg_weight=1.0, spectral_target=0.8)
    ux = layer.x @ layer.u.T

    def radii() -> list[float]:
        z_star = layer.solve(config)[0].detach()
        jacobian = torch.autograd.functional.jacobian(lambda z: layer.step(z, ux), z_star)
        return [torch.linalg.eigvals(jacobian[b, :, b, :]).abs().max().item() for b in range(3)]

    assert max(radii()) > 1.2
    optimiser = torch.optim.SGD([layer.w], lr=0.2)
    torch.manual_seed(0)
    for _ in range(60):
        optimiser.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _, info = layer.solve(config)
        info.jac_loss.backward()
        optimiser.step()
    _, info = layer.solve(config)
    assert info.forward.converged.all()
    assert max(radii()) < 0.9
    assert info.spectral_estimate is not None and (info.spectral_estimate < 0.9).all()


@pytest.mark.parametrize("drop", [True, False])
def test_samples_whose_forward_solve_missed_the_tolerance_are_left_out_of_the_gradient(drop):
    # f(z) = a_b z + x_b: sample 0 (a = 0.1) converges in 10 forward steps, sample 1 (a = 0.99) does not. At a fixed
    # point d sum(z*) / dx = 1 / (1 - a) per element.
    a = torch.tensor([[0.1], [0.99]], dtype=DOUBLE)
    x = torch.ones(2, 3, dtype=DOUBLE, requires_grad=True)
    config = FixedPointConfig(
        k_fwd=10, solver_fwd="forward", tol_fwd=1e-6, k_bwd=2000, tol_bwd=1e-12, drop_unconverged=drop
    )
    with pytest.warns(RuntimeWarning, match="forward"):
        z, info = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config)
    assert info.forward.converged.tolist() == [True, False]
    (grad,) = torch.autograd.grad(z.sum(), x)
    assert torch.allclose(grad[0], torch.full((3,), 1 / 0.9, dtype=DOUBLE))
    if drop:
        assert (grad[1] == 0).all()
    else:
        assert torch.allclose(grad[1], torch.full((3,), 100.0, dtype=DOUBLE), rtol=1e-6)


def test_phantom_gradient_also_leaves_out_samples_without_a_fixed_point():
    a = torch.tensor([[0.1], [0.99]], dtype=DOUBLE)
    x = torch.ones(2, 3, dtype=DOUBLE, requires_grad=True)
    config = FixedPointConfig(k_fwd=10, solver_fwd="forward", tol_fwd=1e-6, gradient="phantom", phantom_steps=3)
    with pytest.warns(RuntimeWarning, match="forward"):
        z, _ = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config)
    (grad,) = torch.autograd.grad(z.sum(), x)
    assert (grad[0] > 0).all() and (grad[1] == 0).all()


def test_gradient_gain_cap_bounds_each_samples_implicit_gradient():
    # At a = 0.99, w = (1 - a)^-1 g = 100 g; a cap of 20 scales that sample to 20 g and leaves a = 0.5 (2 g) alone.
    a = torch.tensor([[0.5], [0.99]], dtype=DOUBLE)
    x = torch.ones(2, 3, dtype=DOUBLE, requires_grad=True)
    config = FixedPointConfig(
        k_fwd=500, solver_fwd="anderson", tol_fwd=1e-12, k_bwd=500, tol_bwd=1e-12, gradient_gain_cap=20.0
    )
    z, _ = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config)
    (grad,) = torch.autograd.grad(z.sum(), x)
    assert torch.allclose(grad, torch.tensor([[2.0] * 3, [20.0] * 3], dtype=DOUBLE), rtol=1e-6)


def test_jacobian_estimate_on_linear_map_is_unbiased():
    torch.manual_seed(0)
    a = torch.randn(5, 5, dtype=DOUBLE)
    z = torch.randn(2, 5, dtype=DOUBLE, requires_grad=True)
    estimates = torch.stack([jacobian_frobenius_estimate(z @ a.T, z).detach() for _ in range(2000)])
    expected = a.pow(2).sum() / 5
    assert abs(estimates.mean() - expected) < 0.05 * expected


@pytest.mark.parametrize("solver", ["forward", "anderson", "broyden"])
def test_diverging_forward_solve_raises_or_warns(solver):
    weight = torch.tensor(2.0, requires_grad=True)
    calls = []

    def f(z):
        calls.append(1)
        if solver == "forward":
            return weight * z + 1
        return 0.5 * weight * z + (1.0 if len(calls) < 4 else float("nan"))

    config = FixedPointConfig(k_fwd=40, solver_fwd=solver)
    with pytest.raises(FloatingPointError, match=f"forward solver '{solver}' diverged for 2 of 2 samples"):
        solve_fixed_point(f, torch.zeros(2, 3), config)
    calls.clear()
    config.on_divergence = "warn"
    with pytest.warns(RuntimeWarning, match="diverged"):
        z, info = solve_fixed_point(f, torch.zeros(2, 3), config)
    assert info.forward.diverged.all()


def repelling_step(weight: torch.Tensor):
    """f(z) = 3 w z + 1: a repelling fixed point z* = -1 / (3w - 1) that root-finders reach but iteration cannot."""
    return lambda z: 3 * weight * z + 1


def test_diverging_backward_solve_raises_or_warns():
    weight = torch.tensor(1.0, dtype=DOUBLE, requires_grad=True)
    config = FixedPointConfig(k_fwd=20, solver_fwd="anderson", k_bwd=60, solver_bwd="forward")
    z, info = solve_fixed_point(repelling_step(weight), torch.zeros(2, 3, dtype=DOUBLE), config)
    torch.testing.assert_close(z.detach(), torch.full((2, 3), -0.5, dtype=DOUBLE))
    with pytest.raises(FloatingPointError, match="backward solver 'forward' diverged for 2 of 2 samples"):
        z.sum().backward()
    config.on_divergence = "warn"
    z, info = solve_fixed_point(repelling_step(weight), torch.zeros(2, 3, dtype=DOUBLE), config)
    with pytest.warns(RuntimeWarning, match="backward solver 'forward' diverged"):
        z.sum().backward()
    assert info.backward[0].diverged.all()


def test_implicit_gradient_of_repelling_fixed_point_with_anderson_backward():
    weight = torch.tensor(1.0, dtype=DOUBLE, requires_grad=True)
    config = FixedPointConfig(k_fwd=20, k_bwd=20, tol_bwd=1e-12)
    z, info = solve_fixed_point(repelling_step(weight), torch.zeros(2, 3, dtype=DOUBLE), config)
    z.sum().backward()
    # z* = -1 / (3w - 1), so dz*/dw = 3 / (3w - 1)^2 = 0.75 per element at w = 1
    torch.testing.assert_close(weight.grad, torch.tensor(6 * 0.75, dtype=DOUBLE))
    assert info.backward[0].converged.all()


@pytest.mark.parametrize("mode", ["implicit", "unrolled"])
def test_image_shaped_state_and_batch_converging_at_different_speeds(mode):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).to(DOUBLE)
    with torch.no_grad():
        conv.weight.mul_(0.5 / conv.weight.abs().sum(dim=(1, 2, 3), keepdim=True))
    rates = torch.tensor([0.1, 0.5, 0.95], dtype=DOUBLE)[:, None, None, None]
    x = torch.randn(3, 3, 5, 7, dtype=DOUBLE, requires_grad=True)

    def f(z):
        return rates * torch.tanh(conv(z)) + x

    config = FixedPointConfig(mode=mode, k_fwd=100, tol_fwd=1e-12, k_bwd=100, tol_bwd=1e-12)
    z, info = solve_fixed_point(f, torch.zeros_like(x), config)
    assert z.shape == x.shape
    with torch.no_grad():
        torch.testing.assert_close(f(z), z, rtol=0, atol=1e-9)
    z.square().sum().backward()
    assert x.grad.shape == x.shape and conv.weight.grad.abs().sum() > 0
    if mode == "implicit":
        assert info.forward.converged.all() and info.backward[0].final_residual.max() < 1e-6


def linear_restriction(a: torch.Tensor, x: torch.Tensor, calls: list):
    """restrict(index) for f(z) = a z + x, recording each call's indices."""

    def restrict(index: torch.Tensor):
        calls.append(index.tolist())
        return lambda z: a[index] * z + x[index]

    return restrict


def test_stragglers_continue_alone_until_they_converge():
    # f(z) = a_b z + x_b, fixed point x / (1 - a). Within 10 forward steps to 1e-6, samples 0 and 2 (a = 0.1, 0.2)
    # converge and sample 1 (a = 0.99) does not; 3,000 steps more on it alone reach the tolerance.
    a = torch.tensor([[0.1], [0.99], [0.2]], dtype=DOUBLE)
    x = torch.ones(3, 4, dtype=DOUBLE, requires_grad=True)
    settings = dict(k_fwd=10, solver_fwd="forward", tol_fwd=1e-6, k_bwd=5000, tol_bwd=1e-12, jac_reg_unconverged=3.0)
    with pytest.warns(RuntimeWarning, match="forward"):
        z_capped, capped = solve_fixed_point(
            lambda z: a * z + x, torch.zeros(3, 4, dtype=DOUBLE), FixedPointConfig(**settings)
        )
    calls = []
    config = FixedPointConfig(**settings, k_fwd_stragglers=3000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every sample converges: no warning
        z, info = solve_fixed_point(
            lambda z: a * z + x, torch.zeros(3, 4, dtype=DOUBLE), config, restrict=linear_restriction(a, x, calls)
        )
    assert calls == [[1]]
    assert info.forward.converged.all() and (info.forward.final_residual <= 1e-6).all()
    assert 10 < info.forward.iterations <= 10 + 3000
    assert torch.allclose(z.detach(), (x / (1 - a)).detach(), rtol=1e-3)  # error <= residual / (1 - a)
    assert torch.equal(z[[0, 2]], z_capped[[0, 2]])  # the converged samples are not touched
    # the regularisers still weigh the sample that missed the tolerance within k_fwd
    assert info.jac_loss.item() == pytest.approx(capped.jac_loss.item())
    # the straggler now has a fixed point, so it keeps its implicit gradient: d sum(z*) / dx = 1 / (1 - a)
    (grad,) = torch.autograd.grad(z.sum(), x)
    assert torch.allclose(grad, (1 / (1 - a)).expand(3, 4), rtol=1e-6)
    # and the epoch's statistics say that it converged only after the cap
    stats = FixedPointStats(torch.device("cpu"))
    stats.add(info)
    assert stats.summary()["fwd_nonconverged"] == 0 and stats.summary()["fwd_over_cap"] == pytest.approx(1 / 3)


def test_a_straggler_that_diverges_keeps_its_first_iterate_and_stays_unconverged():
    a = torch.tensor([[0.1], [0.99]], dtype=DOUBLE)
    x = torch.ones(2, 3, dtype=DOUBLE)
    config = FixedPointConfig(k_fwd=10, solver_fwd="forward", tol_fwd=1e-6)
    with pytest.warns(RuntimeWarning, match="forward"):
        z_capped, _ = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config)
    config.k_fwd_stragglers = 200
    repelling = lambda index: lambda z: 3.0 * z + x[index]  # noqa: E731
    with pytest.warns(RuntimeWarning, match="forward"):
        z, info = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config, restrict=repelling)
    assert torch.equal(z, z_capped)
    assert info.forward.converged.tolist() == [True, False] and not info.forward.diverged.any()


def test_stragglers_are_continued_by_their_own_solver(monkeypatch):
    """Anderson runs the batch; the plain iteration (``solver_stragglers``) the samples it left above tolerance."""
    import idp_agents.implicit as implicit

    used, real = [], implicit.get_solver
    monkeypatch.setattr(implicit, "get_solver", lambda name: used.append(name) or real(name))
    a = torch.tensor([[0.1], [0.99]], dtype=DOUBLE)
    x = torch.ones(2, 3, dtype=DOUBLE)
    config = FixedPointConfig(k_fwd=5, tol_fwd=1e-8, k_fwd_stragglers=4000)
    with torch.no_grad():
        z, info = solve_fixed_point(
            lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config, restrict=linear_restriction(a, x, [])
        )
    assert used == ["anderson", "forward"] and info.forward.converged.all()
    assert torch.allclose(z, x / (1 - a), rtol=1e-6)
    with pytest.raises(ValueError, match="solver_stragglers='newton' is not one of"):
        FixedPointConfig(solver_stragglers="newton")


def test_stragglers_need_the_restricted_step_and_a_tolerance():
    a = torch.tensor([[0.1], [0.99]], dtype=DOUBLE)
    x = torch.ones(2, 3, dtype=DOUBLE)
    calls = []
    for changes, restrict in (({}, None), ({"tol_fwd": None}, linear_restriction(a, x, calls))):
        config = FixedPointConfig(**({"k_fwd": 10, "solver_fwd": "forward", "tol_fwd": 1e-6} | changes))
        config.k_fwd_stragglers = 100
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, info = solve_fixed_point(lambda z: a * z + x, torch.zeros(2, 3, dtype=DOUBLE), config, restrict=restrict)
        assert info.forward.iterations == 10 and not info.forward.converged[1]
    assert calls == []
    with pytest.raises(ValueError, match="k_fwd_stragglers must be non-negative"):
        FixedPointConfig(k_fwd_stragglers=-1)


def test_config_validation_names_a_negative_regulariser_weight():
    with pytest.raises(ValueError, match="jac_reg_unconverged"):
        FixedPointConfig(jac_reg_unconverged=-1.0)
    with pytest.raises(ValueError, match="spectral_reg_weight"):
        FixedPointConfig(spectral_reg_weight=-1.0)
    with pytest.raises(ValueError, match="spectral_target must be positive"):
        FixedPointConfig(spectral_target=0.0)
    with pytest.raises(ValueError, match="gradient_gain_cap must be at least 1"):
        FixedPointConfig(gradient_gain_cap=0.5)


def test_config_validation():
    with pytest.raises(ValueError, match="mode='unroled' is not one of unrolled, implicit"):
        FixedPointConfig(mode="unroled")
    with pytest.raises(ValueError, match="solver_bwd='newton'"):
        FixedPointConfig(solver_bwd="newton")
    with pytest.raises(ValueError, match="k_fwd must be at least 1"):
        FixedPointConfig(k_fwd=0)
    with pytest.raises(ValueError, match="on_divergence"):
        FixedPointConfig(on_divergence="ignore")
    with pytest.raises(ValueError, match="phantom_damping"):
        FixedPointConfig(phantom_damping=0.0)
    config = FixedPointConfig()
    config.gradient = "exact"
    with pytest.raises(ValueError, match="gradient='exact'"):
        solve_fixed_point(lambda z: z, torch.zeros(1, 2), config)


def test_no_extra_graph_in_eval():
    layer = TanhLayer()
    with torch.no_grad():
        z, info = layer.solve(FixedPointConfig(k_fwd=10, jac_reg_weight=1.0))
    assert z.grad_fn is None and info.jac_loss is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.solve(FixedPointConfig(k_fwd=10))


def test_implicit_output_is_freed_without_garbage_collector():
    """The backward hook must not tie the solution into a reference cycle that keeps the graph alive."""
    import gc
    import weakref

    layer = TanhLayer()
    enabled = gc.isenabled()
    gc.disable()
    try:
        z, _ = layer.solve(FixedPointConfig(k_fwd=10))
        base = weakref.ref(z._base)
        loss = (z - layer.target).square().sum()
        del z
        assert base() is not None
        del loss
        assert base() is None
    finally:
        if enabled:
            gc.enable()
