"""The arm's workspace -> C-space mapper: shapes, the polar front end, rotation equivariance, losses, learning."""

import numpy as np
import pytest
import torch

from idp_agents.mappers import ArmCSpaceMapper, cspace_accuracy, cspace_bce_loss
from idp_agents.planner_input import mapped_planner_maps
from idp_envs import arm_geometry as geometry
from idp_envs.envs import arm


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation (10x slower on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch():
    return arm.sample_arm_tasks(8, 18, np.random.default_rng(0))


@pytest.mark.parametrize("bins", [18, 36])
def test_logits_have_the_cspace_shape(bins):
    torch.manual_seed(0)
    mapper = ArmCSpaceMapper(bins, channels=8)
    images = torch.from_numpy(arm.sample_arm_tasks(3, bins, np.random.default_rng(1)).extras["workspace"])
    logits = mapper(images)
    assert logits.shape == (3, bins, bins) and logits.dtype == torch.float32
    assert torch.allclose(mapper(images[:, None].float()), logits)
    assert torch.allclose(mapper(images[:1]), logits[:1], atol=1e-5)  # group norm: no dependence on the batch


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="bins"):
        ArmCSpaceMapper(17)
    with pytest.raises(ValueError, match="radii"):
        ArmCSpaceMapper(18, radii=20)
    with pytest.raises(ValueError, match="channels"):
        ArmCSpaceMapper(18, channels=0)
    with pytest.raises(ValueError, match="workspace"):
        ArmCSpaceMapper(18, channels=4)(torch.zeros(2, 64, 64))
    with pytest.raises(ValueError, match="same shape"):
        cspace_bce_loss(torch.zeros(2, 18, 18), torch.zeros(2, 36, 36))
    with pytest.raises(ValueError, match="goal"):
        mapped_planner_maps(torch.zeros(2, 18, 18), torch.zeros(2, 3, dtype=torch.long))


def test_polar_image_puts_an_obstacle_at_its_angle_and_radius():
    mapper = ArmCSpaceMapper(18, channels=4)
    # a small square 3 units east of the base: angle 0, radius 3 of the polar grid's 4.3
    square = np.array([[7.8, 4.8], [8.2, 4.8], [8.2, 5.2], [7.8, 5.2]])
    image = torch.from_numpy(arm.arm_task([square], (1, 0), (2, 0)).extras["workspace"])
    polar = mapper.polar(image[None])[0, 0]  # (72, 24): rows = angles 5 deg apart, cols = radii
    assert polar.shape == (72, 24)
    row, col = np.unravel_index(int(polar.argmax()), polar.shape)
    assert row in (0, 1, 71) and abs((col + 0.5) * 4.3 / 24 - 3.0) < 0.3
    assert polar[18:54].max() == 0  # nothing to the west


def test_turning_the_polar_image_by_two_joint_bins_shifts_the_logits_by_two_rows(batch):
    torch.manual_seed(0)
    mapper = ArmCSpaceMapper(18, channels=8).eval()
    polar = mapper.polar(torch.from_numpy(batch.extras["workspace"]))
    with torch.no_grad():
        shifted = mapper.forward_polar(torch.roll(polar, 8, dims=2))
        expected = torch.roll(mapper.forward_polar(polar), 2, dims=1)
    assert torch.allclose(shifted, expected, atol=1e-4)


def test_rotated_workspaces_give_nearly_rolled_polar_images(batch):
    mapper = ArmCSpaceMapper(18, channels=4)
    vertices, counts = batch.extras["obstacle_vertices"], batch.extras["obstacle_counts"]
    angle = 2 * 2 * np.pi / 18  # two first-joint bins = 8 polar rows
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rotated = geometry.rasterise_workspace(geometry.BASE + (vertices - geometry.BASE) @ rot.T, counts)
    polar = mapper.polar(torch.from_numpy(batch.extras["workspace"]))
    polar_rot = mapper.polar(torch.from_numpy(rotated))
    assert polar.sum() > 0
    assert (polar_rot - torch.roll(polar, 8, dims=2)).abs().mean() < 0.15 * polar.mean()


def test_bce_loss_and_accuracy_helpers():
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert torch.isclose(cspace_bce_loss(logits, target.to(torch.uint8)), expected)
    assert cspace_accuracy(logits, target.to(torch.uint8)).item() == 0.5
    weighted = cspace_bce_loss(logits, target, pos_weight=3.0)
    manual = -(
        3.0 * target * torch.nn.functional.logsigmoid(logits) + (1 - target) * torch.nn.functional.logsigmoid(-logits)
    ).mean()
    assert torch.isclose(weighted, manual)


def test_planner_maps_are_differentiable_occupancy_and_goal():
    logits = torch.randn(2, 18, 18, requires_grad=True)
    maps = mapped_planner_maps(logits, torch.tensor([[3, 4], [17, 0]]))
    assert maps.shape == (2, 2, 18, 18)
    assert torch.allclose(maps[:, 0], torch.sigmoid(logits))
    assert maps[0, 1, 3, 4] == 1 and maps[1, 1, 17, 0] == 1 and maps[:, 1].sum() == 2
    maps[:, 0].sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_mapper_fits_a_few_cspaces(batch):
    torch.manual_seed(0)
    mapper = ArmCSpaceMapper(18, channels=8)
    images = torch.from_numpy(batch.extras["workspace"])
    target = torch.from_numpy(batch.occupancy)
    optimiser = torch.optim.Adam(mapper.parameters(), lr=3e-3)
    first = cspace_bce_loss(mapper(images), target).item()
    for _ in range(40):
        optimiser.zero_grad()
        loss = cspace_bce_loss(mapper(images), target)
        loss.backward()
        optimiser.step()
    assert all(p.grad is not None for p in mapper.parameters())
    assert loss.item() < 0.5 * first
    assert cspace_accuracy(mapper(images), target) > 1 - 0.6 * target.float().mean()
