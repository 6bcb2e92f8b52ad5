#!/usr/bin/env python3
"""Benchmarks of magsd-timm, reported as ratios measured in one run on one machine.

Suite `model`: MA-Net inference and one forward+backward against the plain timm backbone with its
own classifier, same input, same threads. The two are timed in alternating rounds in one process
(median per step), so that drift of a shared machine hits both alike. Peak memory is measured for
each in a fresh process (CPU: the rise of the peak resident set over two steps; CUDA: peak allocated).

    python recipes/benchmark.py                      # CPU, fp32, batch 8, 224 px, 2 threads
    python recipes/benchmark.py --device cuda --dtype bfloat16 --batch-size 32
"""
import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

TARGET_RATIO = 1.10  # MA-Net over the plain backbone, for inference and for forward+backward


def _parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='magsd_resnet50', help='magsd_* model to time')
    parser.add_argument('--baseline', default='resnet50', help='plain timm model to compare with')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--threads', type=int, default=2, help='CPU threads for torch')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                        help='autocast dtype (float32: no autocast)')
    parser.add_argument('--min-run-time', type=float, default=20., help='seconds of timing per case')
    parser.add_argument('--output', type=Path, default=Path('benchmark_results/model.md'),
                        help='Markdown table to write')
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.img_size < 32 or args.threads < 1 or args.min_run_time <= 0:
        parser.error('--batch-size and --threads must be >= 1, --img-size >= 32, --min-run-time > 0')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available here')
    return args


def _peak_bytes(device: torch.device) -> int:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _make_step(name: str, mode: str, args: argparse.Namespace) -> Callable[[], None]:
    """Build one model and return a closure running one inference or one forward+backward."""
    import timm
    import magsd_timm  # noqa: F401  (registers magsd_* models)

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = timm.create_model(name, in_chans=1, num_classes=4).to(device).train(mode != 'inference')
    x = torch.randn(args.batch_size, 1, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 4, (args.batch_size,), device=device)
    use_bf16 = args.dtype == 'bfloat16'

    def infer() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            model(x)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    step = infer if mode == 'inference' else train_step
    if device.type == 'cuda':
        def synced() -> None:
            step()
            torch.cuda.synchronize(device)
        return synced
    return step


def _peak_memory_mib(name: str, mode: str, args: argparse.Namespace) -> float:
    """Peak memory that steps of one model add, measured in this (fresh) process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    step = _make_step(name, mode, args)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    before = _peak_bytes(device) if device.type == 'cpu' else 0
    for _ in range(2):
        step()
    return (_peak_bytes(device) - before) / 2 ** 20


def _isolated_peak_memory_mib(name: str, mode: str, args: argparse.Namespace) -> float:
    with mp.get_context('spawn').Pool(1) as pool:
        return pool.apply(_peak_memory_mib, (name, mode, args))


def _interleaved_medians(steps: Dict[str, Callable[[], None]], min_run_time: float) -> Dict[str, float]:
    """Median seconds per step, alternating the steps round by round so that drift hits all alike."""
    for step in steps.values():
        step(), step()  # warm-up: allocator, kernel selection, gradient buffers
    times: Dict[str, List[float]] = {k: [] for k in steps}
    start = time.perf_counter()
    while time.perf_counter() - start < min_run_time or len(times[next(iter(steps))]) < 5:
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _machine(args: argparse.Namespace) -> str:
    if args.device == 'cuda':
        return f'{torch.cuda.get_device_name()}, torch {torch.__version__}'
    cpuinfo = Path('/proc/cpuinfo')
    names = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith('model name')] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f'{cpu}, {args.threads} threads, torch {torch.__version__}'


def run_model_suite(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """MA-Net against its plain backbone, inference and forward+backward."""
    torch.set_num_threads(args.threads)
    names, modes = (args.baseline, args.model), ('inference', 'forward+backward')
    # Memory first: a child process inherits the parent's peak resident set at fork time, which must
    # stay below what the child reaches once it has built its model.
    memory = {(name, mode): _isolated_peak_memory_mib(name, mode, args) for mode in modes for name in names}
    rows = []
    for mode in modes:
        seconds = _interleaved_medians({name: _make_step(name, mode, args) for name in names}, args.min_run_time)
        ratio = seconds[args.model] / seconds[args.baseline]
        rows.append(dict(
            case=mode, seconds=seconds, memory={name: memory[name, mode] for name in names}, ratio=ratio,
            verdict='meets' if ratio <= TARGET_RATIO else 'MISSES'))
    return rows


def _table(rows: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    setting = f'{args.device}, {args.dtype}, batch {args.batch_size}, {args.img_size} px'
    lines = [
        f'Machine: {_machine(args)}. Setting: {setting}.',
        '',
        f'| case | {args.baseline} (ms) | {args.model} (ms) | ratio | target | peak MiB '
        f'({args.baseline} / {args.model}) |',
        '|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {1e3 * r['seconds'][args.baseline]:.1f} | {1e3 * r['seconds'][args.model]:.1f} | "
            f"{r['ratio']:.3f}x | <= {TARGET_RATIO:.2f}x ({r['verdict']}) | "
            f"{r['memory'][args.baseline]:.0f} / {r['memory'][args.model]:.0f} |")
    return '\n'.join(lines) + '\n'


def main(argv: List[str]) -> int:
    """Run the benchmark, print the table and write it to --output."""
    args = _parse_args(argv)
    rows = run_model_suite(args)
    table = _table(rows, args)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(f'written to {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
