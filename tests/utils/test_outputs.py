"""Outputs are whole or absent, JSON has no bare NaN, one writer per output, and a full disk is named."""
import errno
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from magsd_timm.utils.outputs import (
    OutputBusyError,
    OutputWriteError,
    atomic_folder,
    atomic_path,
    check_no_overlap,
    exclusive_lock,
    recover_folder,
    strict_json,
    write_failure,
    write_text_atomic,
)


def test_a_failed_write_leaves_the_earlier_file_whole(tmp_path):
    target = tmp_path / 'out.txt'
    target.write_text('earlier')
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, 'bad \udcff')  # a lone surrogate cannot be written as UTF-8
    assert target.read_text() == 'earlier' and os.listdir(tmp_path) == ['out.txt']
    write_text_atomic(target, 'new')
    assert target.read_text() == 'new' and os.listdir(tmp_path) == ['out.txt']


def test_a_block_that_fails_leaves_no_partial_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / 'plot.png') as staged:
            assert staged.suffix == '.png' and staged.parent == tmp_path
            staged.write_bytes(b'half')
            raise RuntimeError('drawing failed')
    assert os.listdir(tmp_path) == []


def test_a_folder_is_replaced_only_when_its_new_content_is_complete(tmp_path):
    folder = tmp_path / 'best'
    folder.mkdir()
    (folder / 'weights').write_text('old')
    with pytest.raises(OSError):
        with atomic_folder(folder) as staging:
            (staging / 'weights').write_text('new, half')
            raise OSError(errno.ENOSPC, 'No space left on device')
    assert (folder / 'weights').read_text() == 'old' and sorted(os.listdir(tmp_path)) == ['best']
    with atomic_folder(folder) as staging:
        (staging / 'weights').write_text('new')
    assert (folder / 'weights').read_text() == 'new' and sorted(os.listdir(tmp_path)) == ['best']


def test_what_a_killed_writer_left_is_put_back_or_removed(tmp_path):
    output = tmp_path / 'data'
    retired = tmp_path / '.data.old'
    retired.mkdir()
    (retired / 'x').write_text('previous')
    (tmp_path / '.data.staging-abc').mkdir()
    notes = recover_folder(output)  # killed between retiring the old output and moving the new one in
    assert (output / 'x').read_text() == 'previous' and sorted(os.listdir(tmp_path)) == ['data']
    assert any('restored' in n for n in notes) and any('staging' in n for n in notes)
    retired.mkdir()
    recover_folder(output)  # killed after the move: the retired copy is stale
    assert sorted(os.listdir(tmp_path)) == ['data'] and (output / 'x').read_text() == 'previous'


def test_json_never_holds_a_bare_nan():
    text = strict_json({'auroc': math.nan, 'scores': [1.0, math.inf, -math.inf], 'n': 3})
    assert 'NaN' not in text and 'Infinity' not in text
    assert json.loads(text) == {'auroc': None, 'scores': [1.0, None, None], 'n': 3}


def test_a_full_disk_is_said_by_name_with_the_free_space(tmp_path):
    from safetensors import SafetensorError

    for error in (OSError(errno.ENOSPC, 'No space left on device'), RuntimeError('basic_ios::clear: iostream error'),
                  RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 3982'),
                  RuntimeError('PytorchStreamWriter failed writing file data/3: file write failed'),
                  SafetensorError('Error while serializing: IoError(Os { code: 28, message: "No space left on device" })')):
        failure = write_failure(tmp_path / 'ckpt', error, 'checkpoint')
        assert isinstance(failure, OutputWriteError) and failure.errno == errno.ENOSPC
        assert str(failure).startswith(f'could not write the checkpoint {tmp_path / "ckpt"}: the disk is full (')
        assert 'MiB free' in str(failure)


LOCK_HOLDER = """
    import sys, time
    from magsd_timm.utils.outputs import exclusive_lock
    with exclusive_lock(sys.argv[1], 'test'):
        print('held', flush=True)
        sys.stdin.readline()
"""


@pytest.mark.subprocess
def test_a_second_writer_is_refused_while_the_first_holds_the_output(tmp_path):
    output = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(LOCK_HOLDER), str(output)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(OutputBusyError, match=rf'being written by another training run \(process {holder.pid}\)'):
            with exclusive_lock(output, 'training run'):
                pass
    finally:
        holder.stdin.write('\n')
        holder.stdin.flush()
        holder.wait(timeout=60)
    with exclusive_lock(output, 'training run'):  # released with its holder
        with pytest.raises(OutputBusyError, match=rf'\(process {os.getpid()}\)'):  # and held again, by us now
            with exclusive_lock(output, 'training run'):
                pass


@pytest.mark.subprocess
def test_a_writer_that_ends_leaves_no_lock_file_and_the_next_one_locks_afresh(tmp_path):
    output = tmp_path / 'run'
    with exclusive_lock(output, 'training run'):
        assert sorted(p.name for p in tmp_path.iterdir()) == ['.run.lock', '.run.lock.pid']
    assert list(tmp_path.iterdir()) == []
    with exclusive_lock(output, 'training run'):
        with pytest.raises(OutputBusyError):
            with exclusive_lock(output, 'training run'):
                pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.subprocess
def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    output = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(LOCK_HOLDER), str(output)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == 'held'
    holder.kill()
    holder.wait(timeout=60)
    assert (tmp_path / '.run.lock').exists()  # the file stays, the operating system's lock does not
    with exclusive_lock(output, 'training run'):
        pass


def test_outputs_follow_the_umask_and_a_replaced_file_keeps_its_mode(tmp_path):
    from safetensors.torch import save_file

    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / 'new.txt', 'x')
        with atomic_path(tmp_path / 'weights.safetensors') as staged:  # safetensors writes its files private (0600)
            save_file({'w': torch.zeros(2)}, str(staged))
        with atomic_folder(tmp_path / 'folder') as staging:
            (staging / 'inside.txt').write_text('y')
            (staging / 'sub').mkdir(mode=0o700)
            save_file({'w': torch.zeros(2)}, str(staging / 'sub' / 'model.safetensors'))
        (tmp_path / 'kept.json').write_text('{}')
        (tmp_path / 'kept.json').chmod(0o604)
        write_text_atomic(tmp_path / 'kept.json', '{"a": 1}')
    finally:
        os.umask(old)
    assert (tmp_path / 'new.txt').stat().st_mode & 0o777 == 0o640
    assert (tmp_path / 'folder').stat().st_mode & 0o777 == 0o750
    assert (tmp_path / 'weights.safetensors').stat().st_mode & 0o777 == 0o640
    assert (tmp_path / 'folder' / 'sub').stat().st_mode & 0o777 == 0o750
    assert (tmp_path / 'folder' / 'sub' / 'model.safetensors').stat().st_mode & 0o777 == 0o640
    assert (tmp_path / 'kept.json').stat().st_mode & 0o777 == 0o604 and (tmp_path / 'kept.json').read_text() == '{"a": 1}'


def test_an_output_that_is_holds_or_lies_in_an_input_is_refused(tmp_path):
    source = tmp_path / 'data' / 'images'
    source.mkdir(parents=True)
    for output, relation in ((source, 'is'), (tmp_path / 'data', 'holds'), (source / 'out', 'lies inside'),
                             (tmp_path / 'data' / 'images' / '..' / 'images', 'is')):
        with pytest.raises(ValueError, match=f'{relation} the input'):
            check_no_overlap(output, [tmp_path / 'elsewhere', source])
    check_no_overlap(tmp_path / 'data' / 'prepared', [source, tmp_path / 'data' / 'a.png'])  # beside it: fine
