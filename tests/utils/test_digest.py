"""file_sha256: the digest of a file's bytes, read in blocks."""
import hashlib

import pytest

from magsd_timm.utils.digest import file_sha256


@pytest.mark.parametrize('size', [0, 1, (1 << 20) + 3])  # empty, one byte, more than one block
def test_the_digest_is_sha256_of_all_the_bytes(tmp_path, size):
    data = bytes(i % 251 for i in range(size))
    (tmp_path / 'f').write_bytes(data)
    assert file_sha256(tmp_path / 'f') == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(tmp_path / 'f')) == file_sha256(tmp_path / 'f')


def test_one_changed_byte_changes_the_digest(tmp_path):
    (tmp_path / 'a').write_bytes(b'\x00' * 4096)
    (tmp_path / 'b').write_bytes(b'\x00' * 4095 + b'\x01')
    assert file_sha256(tmp_path / 'a') != file_sha256(tmp_path / 'b')
