"""What the suites share: the cases built alike, their timing and peak memory, the verdict and machine line.

Every suite times its cases in alternating rounds in one process (median seconds per step), so that
drift of a shared machine hits all cases alike.

Peak memory is measured for each case in a fresh process: what two steps add to the memory of the
built model and batch (CPU: the peak resident set, reset once they are built; CUDA: peak allocated).
"""
import argparse
import math
import multiprocessing as mp
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from magsd_timm.errors import BadInputError
from magsd_timm.utils.tables import shown_path

Step = Callable[[], None]


def batch(args: argparse.Namespace, channels_last: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 1, args.img_size, args.img_size, generator=g).to(args.device)
    y = torch.randint(0, 4, (args.batch_size,), generator=g).to(args.device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def create(name: str, args: argparse.Namespace, channels_last: bool = False) -> torch.nn.Module:
    import timm

    import magsd_timm  # noqa: F401  (registers magsd_* models)

    torch.manual_seed(0)
    kwargs = args.model_kwargs if name == args.model else {}
    model = timm.create_model(name, in_chans=1, num_classes=4, **kwargs).to(args.device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def autocast(args: argparse.Namespace, enabled: bool = True) -> torch.autocast:
    return torch.autocast(args.device, dtype=torch.bfloat16, enabled=enabled and args.dtype == 'bfloat16')


def synced(step: Step, args: argparse.Namespace) -> Step:
    if args.device != 'cuda':
        return step

    def synced() -> None:
        step()
        torch.cuda.synchronize()
    return synced


def interleaved_medians(steps: Dict[str, Step], min_run_time: float, min_rounds: int) -> Dict[str, float]:
    """Median seconds per step, alternating the steps round by round so that drift hits all alike."""
    for step in steps.values():
        step(), step()  # warm-up: allocator, kernel selection, gradient buffers, compilation
    times: Dict[str, List[float]] = {k: [] for k in steps}
    start = time.perf_counter()
    while time.perf_counter() - start < min_run_time or min(len(v) for v in times.values()) < min_rounds:
        for key, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _status_kib(field: str) -> int:
    return int(re.search(rf'{field}:\s+(\d+)', Path('/proc/self/status').read_text()).group(1))


def _peak_memory_mib(make_step: Callable[..., Step], step_args: tuple, args: argparse.Namespace) -> float:
    """Peak memory that two steps add over the built model and batch, measured in this (fresh) process."""
    torch.set_num_threads(args.threads)
    step = make_step(*step_args)
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path('/proc/self/clear_refs').write_text('5')  # Linux: reset the peak resident set to the current one
        before = _status_kib('VmRSS') * 1024
    for _ in range(2):
        step()
    peak = torch.cuda.max_memory_allocated() if args.device == 'cuda' else _status_kib('VmHWM') * 1024
    return (peak - before) / 2 ** 20


def isolated_peak_memory_mib(make_step: Callable[..., Step], step_args: tuple, args: argparse.Namespace) -> float:
    """_peak_memory_mib in a fresh process, forked from a server that imported torch and timm (but ran nothing)."""
    context = mp.get_context('forkserver')
    context.set_forkserver_preload(['torch', 'timm', 'magsd_timm'])
    with context.Pool(1) as pool:
        return pool.apply(_peak_memory_mib, (make_step, step_args, args))


def meets_or_misses(ok: bool) -> str:
    return 'meets' if ok else 'MISSES'


def machine(args: argparse.Namespace) -> str:
    if args.device == 'cuda':
        return f'{torch.cuda.get_device_name()}, torch {torch.__version__}'
    cpuinfo = Path('/proc/cpuinfo')
    names = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith('model name')] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return f'{cpu}, {args.threads} threads, torch {torch.__version__}'


def film_files(folders: Sequence[Path], flag: str) -> List[Path]:
    """The films of the folders a flag gives (every image file below them), or the bundled sample."""
    from magsd_timm.data.sample import sample_records
    from magsd_timm.data.sources import IMAGE_SUFFIXES

    if not folders:
        return [Path(r['path']) for r in sample_records()]
    files = sorted(p for folder in folders for p in Path(folder).rglob('*')
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInputError(f"{flag} {' '.join(map(shown_path, folders))}: no image files.")
    return files


def die_with_parent() -> None:
    """In a child process: be killed when the benchmark dies (SIGKILL too), so no run goes on holding its folder."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # no prctl on this system: the child outlives a killed benchmark
        pass


def mean_std(values: List[float]) -> str:
    """Mean ± standard deviation of the defined values ('n/a' when none is)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return 'n/a'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.:.3f}'
