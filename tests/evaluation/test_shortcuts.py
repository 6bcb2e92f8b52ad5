"""Shortcuts: accuracy per class and source, and what hiding the lungs or the border does to the answers."""
import torch
import torch.nn as nn

from magsd_timm.evaluation.localization import Boxes
from magsd_timm.evaluation.shortcuts import (
    border_masks,
    central_masks,
    class_source_accuracy,
    hiding_markdown,
    hiding_report,
)

CLASSES = ['COVID-19', 'normal']


class _Looker(nn.Module):
    """Answers COVID-19 when the region it reads (a mask over a 32 x 32 input) is bright, normal when dark."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer('region', region.float())
        self.scale = nn.Parameter(torch.tensor(10.))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signal = (x * self.region).sum(dim=(1, 2, 3)) / self.region.sum()
        return torch.stack([self.scale * signal, torch.full_like(signal, 0.5)], dim=1)


class _Films(torch.utils.data.Dataset):
    """Bright normalised films (every pixel 1): a reader of any region answers COVID-19 on them."""

    def __init__(self, count: int, names=None):
        self.count, self.names = count, names or [f'{i}.png' for i in range(count)]

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        return torch.ones(1, 32, 32), 0

    def file_names(self):
        return self.names

    def window(self, i):
        return None  # the model sees the whole film


def test_accuracy_per_class_and_source_shows_a_class_recognised_in_one_source_only():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    predictions = torch.tensor([0, 0, 1, 1, 1, 1])
    sources = ['ieee8023', 'ieee8023', 'radiography', 'radiography', 'radiography', 'kermany']
    table = class_source_accuracy(predictions, labels, sources, CLASSES)
    assert table == {'COVID-19': {'ieee8023': {'num_images': 2, 'accuracy': 1.0},
                                  'radiography': {'num_images': 2, 'accuracy': 0.0}},
                     'normal': {'kermany': {'num_images': 1, 'accuracy': 1.0},
                                'radiography': {'num_images': 1, 'accuracy': 1.0}}}


def test_the_border_frame_leaves_the_lungs_alone():
    centre = central_masks(2, (40, 40))
    frame = border_masks(centre)
    assert not (frame & centre).any() and frame[0, 0, 0, 0] and frame[0, 0, 39, 20] and not frame[0, 0, 20, 20]
    assert abs(centre.float().mean() - 0.42) < 0.01 and abs(frame.float().mean() - (1 - 0.75 ** 2)) < 0.02
    lungs = torch.zeros(1, 1, 40, 40, dtype=torch.bool)
    lungs[..., 2:38, 2:20] = True  # a lung box reaching into the frame: the frame gives way
    assert not (border_masks(lungs) & lungs).any()


def test_a_model_that_reads_the_border_still_answers_covid_with_the_lungs_hidden_and_the_report_says_so():
    centre = central_masks(1, (32, 32))[0]
    border_reader = hiding_report(_Looker(border_masks(centre[None])[0]), _Films(6), CLASSES)
    assert border_reader['lungs'] == dict(border_reader['lungs'], answers_changed=0.0, focus_kept=1.0)
    assert border_reader['border']['answers_changed'] == 1.0 and border_reader['border']['focus_kept'] == 0.0
    assert border_reader['focus_answers'] == 6 and border_reader['with_lung_boxes'] == 0
    text = hiding_markdown(border_reader)
    assert 'still answers COVID-19 for 100% of the 6 images' in text and 'wrong evidence' in text

    lung_reader = hiding_report(_Looker(centre), _Films(6), CLASSES)
    assert lung_reader['lungs']['answers_changed'] == 1.0 and lung_reader['border']['answers_changed'] == 0.0
    assert lung_reader['lungs']['answer_probability_drop'] > 0.4 and 'wrong evidence' not in hiding_markdown(lung_reader)


def test_an_image_with_lung_boxes_hides_its_boxes_not_the_central_region():
    boxes = Boxes()
    boxes['0.png'] = ((64, 64), [(0, 0, 16, 64)])  # the left quarter of the original, 8 columns of the input
    left_reader = torch.zeros(1, 32, 32, dtype=torch.bool)
    left_reader[..., :8] = True
    report = hiding_report(_Looker(left_reader), _Films(2), CLASSES, boxes)
    assert report['with_lung_boxes'] == 1
    assert report['lungs']['answers_changed'] == 0.5  # the image with boxes lost its left quarter; the other did not
