"""The suites of recipes/benchmark.py, one module each: `run(args)` gives the suite's Markdown table.

Each module's docstring says what its suite measures (the command's --help shows them all), and its
constants are its targets.
"""
from . import attention, cli, cxr, data, maps, model, near_copies, predict, step, throughput, trainer

SUITES = {'model': model, 'step': step, 'data': data, 'trainer': trainer, 'throughput': throughput,
          'attention': attention, 'cli': cli, 'cxr': cxr, 'near-copies': near_copies, 'predict': predict,
          'maps': maps}
NAMED_ONLY = ('cxr', 'near-copies', 'predict', 'maps')  # they read real data or a trained model: run only when named
