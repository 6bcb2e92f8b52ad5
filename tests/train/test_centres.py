"""WS-DAN's feature-centre loss: the distance it adds, how the centres move, what a checkpoint keeps."""
import pytest
import torch
import torch.nn.functional as F

from magsd_timm.train.centres import FeatureCentres


def test_at_the_start_each_film_is_one_unit_away_and_its_class_centre_moves_a_share_towards_it():
    centres = FeatureCentres(4, num_classes=3, weight=2., rate=0.05)
    features = torch.tensor([[3., 0., 0., 0.], [0., 0., 2., 0.], [0., 5., 0., 0.]])
    loss, parts = centres.loss(features, torch.tensor([0, 0, 2]))
    assert torch.isclose(parts['centre_distance'], torch.tensor(1.)) and torch.isclose(loss, torch.tensor(2.))
    # class 0: the mean of its two films' unit vectors, a twentieth of the way; class 1 had no film: unmoved
    assert torch.allclose(centres.centres, torch.tensor([[0.025, 0., 0.025, 0.], [0.] * 4, [0., 0.05, 0., 0.]]))


def test_a_class_that_keeps_its_films_is_drawn_to_their_mean_direction_and_its_distance_falls_to_their_spread():
    centres = FeatureCentres(8, num_classes=1, weight=1., rate=0.2)
    torch.manual_seed(0)
    features, labels = torch.randn(3, 8), torch.zeros(3, dtype=torch.long)
    centres.centres.copy_(-features.mean(0, keepdim=True))  # pointing away from the films at the start
    distances = [float(centres.loss(features, labels)[1]['centre_distance']) for _ in range(200)]
    units = F.normalize(features, dim=-1)
    direction = F.normalize(units.mean(0), dim=-1)
    spread = float((units - direction).pow(2).sum(-1).mean())  # the least mean distance any one centre leaves
    assert distances[0] > 2. and distances[-1] == pytest.approx(spread, abs=1e-4)
    assert all(a >= b - 1e-6 for a, b in zip(distances, distances[1:]))
    assert torch.allclose(F.normalize(centres.centres[0], dim=-1), direction, atol=1e-4)


def test_the_gradient_pulls_the_features_towards_their_centre_and_not_the_centres():
    centres = FeatureCentres(4, num_classes=2, weight=1.)
    centres.centres.copy_(torch.tensor([[1., 0., 0., 0.], [0., 1., 0., 0.]]))
    features = torch.tensor([[1., 1., 0., 0.]], requires_grad=True)
    loss, _ = centres.loss(features, torch.tensor([0]))
    loss.backward()
    stepped = features.detach() - 0.1 * features.grad
    assert stepped[0, 0] / stepped[0, 1] > 1.  # turned towards class 0's centre
    assert not centres.centres.requires_grad and not list(centres.parameters())


def test_the_centres_are_in_the_state_a_checkpoint_saves_and_a_resume_loads():
    trained = FeatureCentres(4, num_classes=2, weight=1.)
    trained.loss(torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))
    resumed = FeatureCentres(4, num_classes=2, weight=1.)
    resumed.load_state_dict(trained.state_dict())
    assert list(trained.state_dict()) == ['centres'] and torch.equal(resumed.centres, trained.centres)


@pytest.mark.parametrize('rate', [0., -0.1, 1.5])
def test_a_rate_outside_zero_to_one_is_refused(rate):
    with pytest.raises(ValueError, match=f'rate {rate}'):
        FeatureCentres(4, 2, weight=1., rate=rate)
