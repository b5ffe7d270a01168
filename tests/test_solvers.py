"""Fixed-point solvers: exactness on linear contractions, speed-ups over forward iteration, divergence, shapes."""

import pytest
import torch

from idp_agents import solver_state
from idp_agents.solvers import SOLVERS, SolverInfo, anderson, broyden, forward_iteration, get_solver
from idp_agents.training import HOST_SYNC_OPS

DOUBLE = torch.float64


def linear_contraction(batch: int = 4, n: int = 24, radius: float = 0.95, seed: int = 0):
    """f(z) = A z + b with symmetric A of spectral radius ``radius`` per sample, and its exact fixed point."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=gen, dtype=DOUBLE))
    eigenvalues = (torch.rand(batch, n, generator=gen, dtype=DOUBLE) * 2 - 1) * radius
    eigenvalues[:, 0] = radius
    a = q @ torch.diag_embed(eigenvalues) @ q.transpose(1, 2)
    b = torch.randn(batch, n, generator=gen, dtype=DOUBLE)

    def f(z):
        return (a @ z[..., None])[..., 0] + b

    exact = torch.linalg.solve(torch.eye(n, dtype=DOUBLE) - a, b)
    return f, exact


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solvers_reach_exact_solution_of_linear_contraction(name):
    f, exact = linear_contraction()
    z, info = get_solver(name)(f, torch.zeros_like(exact), 1000, tol=1e-11, check_every=1)
    assert info.converged.all() and not info.diverged.any()
    assert info.final_residual.max() <= 1e-11
    torch.testing.assert_close(z, exact, rtol=0, atol=1e-8)


def test_anderson_and_broyden_need_fewer_iterations_than_forward():
    f, exact = linear_contraction()
    z0 = torch.zeros_like(exact)
    iterations = {name: solver(f, z0, 1000, tol=1e-10, check_every=1)[1].iterations for name, solver in SOLVERS.items()}
    assert iterations["anderson"] < iterations["forward"] / 2
    assert iterations["broyden"] < iterations["forward"] / 2


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_no_tolerance_runs_full_budget_and_records_every_check(name):
    f, exact = linear_contraction()
    z, info = get_solver(name)(f, torch.zeros_like(exact), 23, tol=None, check_every=5)
    assert info.iterations == 23
    assert info.residuals.shape == (5, exact.shape[0])  # checks at 5, 10, 15, 20 and the end
    assert not info.converged.any() and not info.diverged.any()
    assert torch.isfinite(z).all()


def test_forward_iteration_returns_iterate_whose_residual_it_reports():
    f, exact = linear_contraction(batch=2, n=6)
    z0 = torch.zeros_like(exact)
    z, info = forward_iteration(f, z0, 7, check_every=7)
    expected = z0
    for _ in range(6):
        expected = f(expected)
    torch.testing.assert_close(z, expected)
    residual = (f(z) - z).norm(dim=1) / (f(z).norm(dim=1) + 1e-12)
    torch.testing.assert_close(info.final_residual, residual)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_state_of_image_shape(name):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 5, 4, generator=gen, dtype=DOUBLE)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1, bias=False).to(DOUBLE)
    with torch.no_grad():
        conv.weight.mul_(0.3)

    def f(z):
        return torch.tanh(conv(z) + x)

    z, info = get_solver(name)(f, torch.zeros_like(x), 200, tol=1e-10)
    assert z.shape == x.shape and info.converged.all()
    with torch.no_grad():
        torch.testing.assert_close(f(z), z, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_samples_converging_at_different_speeds(name):
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(8, 8, generator=gen, dtype=DOUBLE)
    w = w / torch.linalg.matrix_norm(w, ord=2)
    rates = torch.tensor([0.05, 0.5, 0.9], dtype=DOUBLE)[:, None, None]
    x = torch.randn(3, 8, generator=gen, dtype=DOUBLE)

    def f(z):
        return torch.tanh((rates * w @ z[..., None])[..., 0] + x)

    reference = torch.zeros_like(x)
    for _ in range(500):
        reference = f(reference)
    z, info = get_solver(name)(f, torch.zeros_like(x), 500, 1e-12, check_every=1)
    assert info.converged.all()
    torch.testing.assert_close(z, reference, rtol=0, atol=1e-10)
    if name == "forward":
        first_below = (info.residuals <= 1e-8).int().argmax(dim=0)
        assert first_below[0] < first_below[1] < first_below[2]


def test_forward_iteration_flags_exploding_step_and_stops_early():
    z, info = forward_iteration(lambda z: 2 * z + 1, torch.zeros(2, 3, dtype=DOUBLE), 200, tol=1e-8)
    assert info.diverged.all() and not info.converged.any()
    assert info.iterations < 30
    assert torch.isfinite(z).all()


def test_forward_iteration_flags_exploding_step_without_tolerance():
    _, info = forward_iteration(lambda z: 2 * z + 1, torch.zeros(2, 3, dtype=DOUBLE), 60, tol=None)
    assert info.diverged.all() and info.iterations == 60


@pytest.mark.parametrize("name", ["anderson", "broyden"])
def test_root_finders_find_repelling_fixed_point(name):
    z, info = get_solver(name)(lambda z: 2 * z + 1, torch.zeros(2, 3, dtype=DOUBLE), 50, tol=1e-10)
    assert info.converged.all() and not info.diverged.any()
    torch.testing.assert_close(z, torch.full_like(z, -1.0))


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_nan_is_flagged_per_sample_and_best_iterate_kept(name):
    def f(z):
        out = 0.5 * z + 1
        poisoned = torch.full_like(out[1], float("nan"))
        return torch.stack([out[0], poisoned]) if z[0, 0] > 1.5 else out

    z, info = get_solver(name)(f, torch.zeros(2, 3, dtype=DOUBLE), 40, tol=None, check_every=1)
    assert info.diverged.tolist() == [False, True]
    assert torch.isfinite(z).all() and torch.isfinite(info.final_residual).all()
    assert info.residuals[-2, 1].isnan()
    torch.testing.assert_close(z[0], torch.full((3,), 2.0, dtype=DOUBLE), rtol=0, atol=1e-6)


def test_fixed_point_as_initial_guess_is_not_divergence():
    f, exact = linear_contraction(batch=2, n=5)
    for solver in SOLVERS.values():
        z, info = solver(f, exact.clone(), 20, tol=None, check_every=1)
        assert not info.diverged.any()
        torch.testing.assert_close(z, exact, rtol=0, atol=1e-12)


def test_float32_and_anderson_options():
    f, exact = linear_contraction()
    z, info = anderson(lambda z: f(z.double()).float(), torch.zeros_like(exact, dtype=torch.float32), 300, 1e-5)
    assert z.dtype == torch.float32 and info.converged.all()
    torch.testing.assert_close(z.double(), exact, rtol=1e-3, atol=1e-4)
    z, info = anderson(f, torch.zeros_like(exact), 1000, 1e-10, m=3, lam=1e-2, beta=0.7, check_every=1)
    assert info.converged.all()
    torch.testing.assert_close(z, exact, rtol=0, atol=1e-7)


def test_broyden_beats_forward_on_nonlinear_problem():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(16, 16, generator=gen, dtype=DOUBLE) * 0.3
    x = torch.randn(4, 16, generator=gen, dtype=DOUBLE)

    def f(z):
        return torch.tanh(z @ w.T + x)

    _, slow = forward_iteration(f, torch.zeros_like(x), 2000, 1e-10, check_every=1)
    z, fast = broyden(f, torch.zeros_like(x), 2000, 1e-10, check_every=1)
    assert fast.converged.all() and fast.iterations < slow.iterations


def test_invalid_arguments():
    z0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown solver 'newton'.*anderson, broyden, forward"):
        get_solver("newton")
    with pytest.raises(ValueError, match="max_iter"):
        forward_iteration(lambda z: z, z0, 0)
    with pytest.raises(ValueError, match="check_every"):
        broyden(lambda z: z, z0, 5, check_every=0)
    with pytest.raises(ValueError, match="floating-point"):
        anderson(lambda z: z, torch.zeros(2, 3, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="beta"):
        anderson(lambda z: z, z0, 5, beta=0.0)
    with pytest.raises(ValueError, match="shape of its input"):
        forward_iteration(lambda z: z[:, :2], z0, 5)


def test_solver_info_final_residual_is_last_row():
    info = SolverInfo(
        3, torch.tensor([[1.0, 2.0], [0.5, 0.25]]), torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    )
    assert info.final_residual.tolist() == [0.5, 0.25]


def test_buffers_made_in_inference_mode_are_not_reused_outside_it():
    """Evaluation (inference mode) and training share a process: the solvers' cached buffers must not leak."""
    a = 0.5 * torch.eye(6)
    for solver in (anderson, broyden):
        with torch.inference_mode():
            solver(lambda z: z @ a + 1.0, torch.zeros(3, 6), 8)
        z, _ = solver(lambda z: z @ a + 1.0, torch.zeros(3, 6), 8)
        assert torch.allclose(z, torch.full((3, 6), 2.0), atol=1e-4)


def reference_anderson(f, x: torch.Tensor, iterations: int, m: int = 5, lam: float = 1e-4) -> list[torch.Tensor]:
    """Anderson acceleration written plainly for one sample x (n,), with the bordered least-squares system: the
    iterates x_1..x_iterations at which f is evaluated."""
    xs, gs, path = [], [], []
    for _ in range(iterations):
        path.append(x)
        xs, gs = (xs + [x])[-m:], (gs + [f(x) - x])[-m:]
        g = torch.stack(gs)
        gram = g @ g.T
        n = len(gs)
        system = torch.zeros(n + 1, n + 1, dtype=x.dtype)
        system[0, 1:] = system[1:, 0] = 1
        system[1:, 1:] = gram + (lam * gram.diagonal().mean() + torch.finfo(x.dtype).tiny ** 0.5) * torch.eye(n)
        rhs = torch.zeros(n + 1, dtype=x.dtype)
        rhs[0] = 1
        alpha = torch.linalg.solve(system, rhs)[1:]
        x = alpha @ (torch.stack(xs) + g)
    return path


def test_anderson_matches_the_bordered_least_squares_reference():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, 12, generator=gen, dtype=DOUBLE) * 0.3
    b = torch.randn(3, 12, generator=gen, dtype=DOUBLE)
    z, _ = anderson(lambda z: torch.tanh(z @ w.T + b), torch.zeros(3, 12, dtype=DOUBLE), 23)
    checked = [k for k in range(23) if (k + 1) % 5 == 0 or k == 22]  # the solver returns its best checked iterate
    for i in range(3):

        def f(x, i=i):
            return torch.tanh(w @ x + b[i])

        path = reference_anderson(f, torch.zeros(12, dtype=DOUBLE), 23)
        best = min(checked, key=lambda k: ((f(path[k]) - path[k]).norm() / f(path[k]).norm()).item())
        assert torch.allclose(z[i], path[best], atol=1e-6, rtol=0)


@pytest.mark.parametrize("lagged", [False, True])
@pytest.mark.parametrize("tol", [None, 1e-6])
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_a_solve_reads_nothing_on_the_host_and_stops_at_the_first_done_check(name, tol, lagged, monkeypatch):
    """No synchronising read inside a solve, with or without a tolerance. With one, the solve stops at the first
    check that sees every sample converged, or at the next check where that check's flag is read late (CUDA's
    path, forced here on the CPU)."""
    monkeypatch.setattr(solver_state, "_lagged_stop", lambda device: lagged)
    f, exact = linear_contraction(batch=4, n=24, radius=0.5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        z, info = get_solver(name)(f, torch.zeros_like(exact), 200, tol=tol, check_every=5)
    assert sum(event.name in HOST_SYNC_OPS for event in profile.events()) == 0
    if tol is None:
        assert info.iterations == 200
        return
    best_so_far = torch.cummin(info.residuals, dim=0).values  # a sample is done once its best iterate is
    first_done = 5 * (1 + next(i for i, r in enumerate(best_so_far) if (r <= tol).all()))
    assert info.iterations == first_done + 5 * lagged < 200 and info.converged.all()
    assert torch.allclose(z, exact, atol=1e-4, rtol=0)
