"""Training against the source: the reversed gradient, its ramp, the features it reads."""
import math

import timm
import torch

import magsd_timm  # noqa: F401  (registers the models)
from magsd_timm.train.adversary import GradientReversal, SourceAdversary, SourceLabelled, classifier_input


def test_the_reversal_passes_forward_and_turns_the_gradient_back_scaled():
    x = torch.randn(3, 5, requires_grad=True)
    y = GradientReversal.apply(x, 0.3)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.3))


def test_the_scale_ramps_from_zero_to_the_weight_over_the_run():
    head = SourceAdversary(8, 2, 3, weight=0.5)
    assert head.scale(0.) == 0. and math.isclose(head.scale(1.), 0.5 * (2 / (1 + math.exp(-10)) - 1))
    assert head.scale(0.1) < head.scale(0.5) < head.scale(1.) and head.scale(2.) == head.scale(1.)


def test_the_head_learns_the_source_while_the_features_are_pushed_the_other_way():
    torch.manual_seed(0)
    features = torch.randn(6, 8, requires_grad=True)
    labels, sources = torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 1, 1, 2, 2])
    head = SourceAdversary(8, 2, 3, weight=1.)
    loss, parts = head.loss(features, labels, sources, progress=1.)
    loss.backward()
    reversed_grad = features.grad.clone()
    features.grad = None
    plain = torch.nn.functional.cross_entropy(
        head.head(torch.cat([head.norm(features), torch.nn.functional.one_hot(labels, 2).float()], 1)), sources)
    plain.backward()
    assert torch.allclose(reversed_grad, -head.scale(1.) * features.grad, atol=1e-6)
    assert set(parts) == {'source_loss', 'source_accuracy'} and all(p.grad is not None for p in head.parameters())


def test_the_classifier_input_is_caught_at_the_first_forward_only_and_the_hook_removed():
    for model in (timm.create_model('magsd_custom', backbone='test_resnet', num_maps=4, num_classes=2),
                  timm.create_model('test_resnet', num_classes=2)):
        x = torch.randn(2, 3 if 'ResNet' in type(model).__name__ else 1, 32, 32)
        with classifier_input(model) as caught:
            model(x)
            model(torch.zeros_like(x))
        assert len(caught) == 1 and caught[0].shape == (2, model.get_classifier().in_features)
        assert not model.get_classifier()._forward_pre_hooks


def test_source_labelled_adds_each_items_source_index():
    class Films:
        def column(self, name):
            return ['b', 'a', 'b']

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1), i

        def set_epoch(self, epoch):
            self.epoch = epoch

    items = SourceLabelled(Films(), ['a', 'b'])
    assert [items[i][2] for i in range(3)] == [1, 0, 1] and items[1][1] == 1
