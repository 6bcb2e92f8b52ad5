"""Sources: folder trees, manifests and converters on small trees laid out as each collection publishes."""
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magsd_timm.data.sources import (
    covid_radiography_records,
    covidx_records,
    folder_records,
    ieee8023_records,
    kermany_records,
    manifest_records,
)


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40), value, dtype=np.uint8)).save(path)
    return path


def test_folder_tree_with_split_folders(tmp_path):
    for split in ('train', 'val', 'test'):
        for label in ('normal', 'pneumonia'):
            _image(tmp_path / 'cxr' / split / label / f'{split}_{label}.png')
    records = folder_records(tmp_path / 'cxr')
    assert Counter(r['split'] for r in records) == {'train': 2, 'validation': 2, 'test': 2}
    assert Counter(r['label'] for r in records) == {'normal': 3, 'pneumonia': 3}
    assert {r['source'] for r in records} == {'cxr'} and all(r['patient_id'] is None for r in records)


def test_folder_tree_without_split_folders(tmp_path):
    _image(tmp_path / 'normal' / 'a.png')
    _image(tmp_path / 'covid' / 'nested' / 'b.jpg')
    records = folder_records(tmp_path, source='mine')
    assert sorted((r['label'], r['split'], r['source']) for r in records) == [
        ('covid', None, 'mine'), ('normal', None, 'mine')]


def test_empty_folder_tree_is_refused(tmp_path):
    (tmp_path / 'normal').mkdir()
    with pytest.raises(ValueError, match='no images in class folders'):
        folder_records(tmp_path)
    with pytest.raises(FileNotFoundError, match='no such folder'):
        folder_records(tmp_path / 'missing')


def test_csv_and_parquet_manifests(tmp_path):
    _image(tmp_path / 'img' / 'a.png')
    (tmp_path / 'm.csv').write_text('path,label,patient_id,source,split\nimg/a.png,normal,p1,siteA,val\n'
                                    f'{tmp_path / "img" / "a.png"},covid,,,\n')
    records = manifest_records(tmp_path / 'm.csv')
    assert records[0] == dict(path=str(tmp_path / 'img' / 'a.png'), label='normal', patient_id='p1',
                              source='siteA', split='validation')
    assert records[1]['patient_id'] is None and records[1]['source'] == 'm' and records[1]['split'] is None

    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'path': ['img/a.png'], 'label': ['normal']}), tmp_path / 'm.parquet')
    assert manifest_records(tmp_path / 'm.parquet')[0]['path'] == str(tmp_path / 'img' / 'a.png')

    (tmp_path / 'bad.csv').write_text('file,class\na.png,normal\n')
    with pytest.raises(ValueError, match='lacks the column\\(s\\) path, label'):
        manifest_records(tmp_path / 'bad.csv')


def test_kermany_layout(tmp_path):
    root = tmp_path / 'chest_xray'
    _image(root / 'train' / 'NORMAL' / 'IM-0115-0001.jpeg')
    _image(root / 'train' / 'PNEUMONIA' / 'person1_bacteria_1.jpeg')
    _image(root / 'train' / 'PNEUMONIA' / 'person1_virus_6.jpeg')
    _image(root / 'val' / 'NORMAL' / 'NORMAL2-IM-1427-0001.jpeg')
    _image(root / 'test' / 'PNEUMONIA' / 'person100_bacteria_475.jpeg')
    records = {Path(r['path']).name: r for r in kermany_records(root)}
    assert records['person1_bacteria_1.jpeg']['label'] == 'bacterial pneumonia'
    assert records['person1_virus_6.jpeg']['label'] == 'viral pneumonia'
    assert records['person1_virus_6.jpeg']['patient_id'] == records['person1_bacteria_1.jpeg']['patient_id'] == 'person1'
    assert records['IM-0115-0001.jpeg']['label'] == 'normal' and records['IM-0115-0001.jpeg']['split'] == 'train'
    assert records['NORMAL2-IM-1427-0001.jpeg']['split'] == 'validation'
    assert {r['source'] for r in records.values()} == {'kermany'}


def test_ieee8023_layout_keeps_pa_and_ap_x_rays_and_maps_findings(tmp_path):
    root = tmp_path / 'covid-chestxray-dataset'
    rows = [
        ('1', 'Pneumonia/Viral/COVID-19', 'PA', 'X-ray', 'a.jpg'),
        ('1', 'Pneumonia/Viral/COVID-19', 'AP Supine', 'X-ray', 'b.jpg'),
        ('2', 'Pneumonia/Bacterial/Streptococcus', 'AP', 'X-ray', 'c.jpg'),
        ('3', 'Pneumonia/Viral/SARS', 'PA', 'X-ray', 'd.jpg'),
        ('4', 'No Finding', 'PA', 'X-ray', 'e.jpg'),
        ('5', 'Pneumonia/Viral/COVID-19', 'L', 'X-ray', 'f.jpg'),
        ('6', 'Pneumonia/Viral/COVID-19', 'Axial', 'CT', 'g.jpg'),
        ('7', 'Tuberculosis', 'PA', 'X-ray', 'h.jpg'),
    ]
    for *_, name in rows:
        _image(root / 'images' / name)
    (root / 'metadata.csv').write_text('patientid,finding,view,modality,folder,filename\n' + ''.join(
        f'{p},{f},{v},{m},images,{n}\n' for p, f, v, m, n in rows))
    source = ieee8023_records(root)
    records = {Path(r['path']).name: r for r in source}
    assert sorted(records) == ['a.jpg', 'b.jpg', 'c.jpg', 'd.jpg', 'e.jpg']
    left_out = {Path(path).name: why for path, why in source.left_out}
    assert left_out == {'f.jpg': "ieee8023: view 'L' is not frontal (PA, AP, AP Supine)",
                        'g.jpg': 'ieee8023: modality CT, not X-ray',
                        'h.jpg': "ieee8023: finding 'Tuberculosis' is not a class of the task"}
    assert [records[f'{n}.jpg']['label'] for n in 'abcde'] == [
        'COVID-19', 'COVID-19', 'bacterial pneumonia', 'viral pneumonia', 'normal']
    assert records['a.jpg']['patient_id'] == '1' and records['a.jpg']['path'] == str(root / 'images' / 'a.jpg')
    without_sars = ieee8023_records(root, label_map={'SARS': None})
    assert sorted(Path(r['path']).name for r in without_sars) == ['a.jpg', 'b.jpg', 'c.jpg', 'e.jpg']


def test_ieee8023_june_2020_snapshot_quirks_are_taken_or_left_out_with_their_reason(tmp_path):
    root = tmp_path / 'covid-chestxray-dataset'
    rows = [  # findings as that snapshot writes them: the organism alone, combined, or not yet given
        ('1', 'COVID-19', 'PA', 'a.jpg'), ('2', 'COVID-19, ARDS', 'AP Supine', 'b.jpg'),
        ('3', 'Streptococcus', 'AP', 'c.jpg'), ('4', 'todo', 'PA', 'd.jpg'), ('5', '', 'PA', 'e.jpg'),
        ('6', 'COVID-19', '', 'f.jpg'), ('7', 'COVID-19', 'PA', 'gone.jpg'), ('8', 'Lipoid', 'PA', 'h.jpg'),
        ('9', 'COVID-19, Streptococcus', 'PA', 'i.jpg'),
    ]
    for *_, name in rows:
        if name != 'gone.jpg':
            _image(root / 'images' / name)
    (root / 'metadata.csv').write_text('patientid,finding,view,modality,filename\n' + ''.join(
        f'{p},"{f}",{v},X-ray,{n}\n' for p, f, v, n in rows))
    source = ieee8023_records(root, classes=['COVID-19'])
    assert {Path(r['path']).name: r['label'] for r in source} == {'a.jpg': 'COVID-19', 'b.jpg': 'COVID-19'}
    left_out = {Path(path).name: why.removeprefix('ieee8023: ') for path, why in source.left_out}
    assert left_out == {
        'c.jpg': "class 'bacterial pneumonia' is not taken from ieee8023 here (it takes COVID-19)",
        'd.jpg': "finding not given ('todo')", 'e.jpg': "finding not given ('')", 'f.jpg': 'view not given',
        'gone.jpg': 'listed in metadata.csv, but the image is missing',
        'h.jpg': "finding 'Lipoid' is not a class of the task",
        'i.jpg': "finding 'COVID-19, Streptococcus' names 2 classes (COVID-19, bacterial pneumonia)",
    }
    assert {Path(r['path']).name for r in ieee8023_records(root)} == {'a.jpg', 'b.jpg', 'c.jpg'}


def test_covid_radiography_layout_has_no_patient_ids(tmp_path):
    root = tmp_path / 'COVID-19_Radiography_Dataset'
    for folder, name in [('COVID', 'COVID-1.png'), ('Normal', 'Normal-1.png'), ('Viral Pneumonia', 'Viral Pneumonia-1.png'),
                         ('Lung_Opacity', 'Lung_Opacity-1.png')]:
        _image(root / folder / 'images' / name)
        _image(root / folder / 'masks' / name)  # masks are not radiographs
    records = covid_radiography_records(root)
    assert sorted(r['label'] for r in records) == ['COVID-19', 'normal', 'viral pneumonia']
    assert all(r['patient_id'] is None and '/images/' in r['path'] for r in records)
    assert len(covid_radiography_records(root, label_map={'Lung_Opacity': 'lung opacity'})) == 4


def test_covidx_label_files(tmp_path):
    root = tmp_path / 'covidx'
    _image(root / 'train' / 'x1.png')
    _image(root / 'test' / 'x2.png')
    (tmp_path / 'train.txt').write_text('p1 x1.png positive cohen\np9 x9.png pneumonia rsna\n')
    (tmp_path / 'test.txt').write_text('p2 x2.png negative rsna\n')
    records = covidx_records(root, {'train': tmp_path / 'train.txt', 'test': tmp_path / 'test.txt'})
    assert [(r['label'], r['patient_id'], r['source'], r['split']) for r in records] == [
        ('COVID-19', 'p1', 'covidx/cohen', 'train'), ('normal', 'p2', 'covidx/rsna', 'test')]


def _manifest(tmp_path: Path, rows) -> Path:
    for name in {r[0] for r in rows}:
        _image(tmp_path / name, value=sum(map(ord, name)) % 255)
    path = tmp_path / 'm.csv'
    path.write_text('path,label,split\n' + ''.join(f'{a},{b},{c}\n' for a, b, c in rows))
    return path


def test_manifest_label_variants_are_one_class_and_said(tmp_path, caplog):
    path = _manifest(tmp_path, [('a.png', 'normal', ''), ('b.png', 'Normal', ''), ('c.png', 'normal ', ''),
                                ('d.png', 'NORMAL', ''), ('e.png', 'pneumonia', '')])
    records = manifest_records(path)
    assert Counter(r['label'] for r in records) == {'normal': 4, 'pneumonia': 1}
    assert "labels 'NORMAL', 'Normal', 'normal', 'normal ' are one class, 'normal'" in caplog.text


@pytest.mark.parametrize('rows, message', [
    ([('a.png', 'normal', ''), ('b.png', '', '')], r'm.csv, row 2 \(b.png\): empty label'),
    ([('a.png', 'normal', 'train'), ('b.png', 'normal', 'tset')], r"m.csv, row 2 \(b.png\): unknown split 'tset'"),
])
def test_manifest_rows_without_a_label_or_with_an_unknown_split_are_errors_that_name_the_row(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        manifest_records(_manifest(tmp_path, rows))


def test_manifest_split_names_are_normalised(tmp_path):
    path = _manifest(tmp_path, [('a.png', 'x', 'Train'), ('b.png', 'x', ' val '), ('c.png', 'y', 'TEST')])
    assert [r['split'] for r in manifest_records(path)] == ['train', 'validation', 'test']


def test_folder_class_names_that_differ_in_case_are_one_class(tmp_path):
    _image(tmp_path / 'train' / 'Normal' / 'a.png', 1)
    _image(tmp_path / 'test' / 'normal' / 'b.png', 2)
    assert {r['label'] for r in folder_records(tmp_path)} == {'Normal'}  # a tie keeps the first spelling, sorted


# ---- metadata from a collection is untrusted: checked columns, paths kept inside, text decoded ---------

def _ieee8023(tmp_path: Path, header: str, lines, encoding: str = 'utf-8') -> Path:
    root = tmp_path / 'covid-chestxray-dataset'
    _image(root / 'images' / 'a.jpg')
    (root / 'metadata.csv').write_bytes((header + '\n' + ''.join(f'{line}\n' for line in lines)).encode(encoding))
    return root


@pytest.mark.parametrize('header, message', [
    ('patientid,view,modality,filename', 'lacks the column(s) finding'),
    ('patientid,finding,filename', 'lacks the column(s) view, modality'),
    ('', 'lacks the column(s) patientid, finding, view, modality, filename'),
])
def test_ieee8023_metadata_without_its_columns_is_refused_naming_them(tmp_path, header, message):
    root = _ieee8023(tmp_path, header, [])
    with pytest.raises(ValueError, match=re.escape(message)):
        ieee8023_records(root)


def test_ieee8023_metadata_with_a_byte_order_mark_or_short_rows_is_read(tmp_path):
    root = _ieee8023(tmp_path, 'patientid,finding,view,modality,filename', ['1,COVID-19,PA,X-ray,a.jpg', '2,COVID-19'],
                     encoding='utf-8-sig')
    source = ieee8023_records(root)
    assert [Path(r['path']).name for r in source] == ['a.jpg'] and len(source.left_out) == 1
    (root / 'metadata.csv').write_bytes(b'patientid,finding,view,modality,filename\n1,\xff,PA,X-ray,a.jpg\n')
    with pytest.raises(ValueError, match='metadata.csv: the ieee8023 metadata is not UTF-8'):
        ieee8023_records(root)
    (root / 'metadata.csv').write_text('patientid,finding,view,modality,filename\n')
    with pytest.raises(ValueError, match='has no rows'):
        ieee8023_records(root)


def test_paths_in_collection_metadata_stay_inside_the_collection(tmp_path):
    outside = _image(tmp_path / 'private' / 'x.png')
    root = _ieee8023(tmp_path, 'patientid,finding,view,modality,folder,filename', [
        '1,COVID-19,PA,X-ray,images,a.jpg', '2,COVID-19,PA,X-ray,images,../../private/x.png',
        f'3,COVID-19,PA,X-ray,images,{outside}', f'4,COVID-19,PA,X-ray,{outside.parent},x.png'])
    source = ieee8023_records(root)
    assert [Path(r['path']).name for r in source] == ['a.jpg']
    assert [why for _, why in source.left_out] == ['ieee8023: the folder or filename leads outside the collection'] * 3
    covidx = tmp_path / 'covidx'
    _image(covidx / 'train' / 'x1.png')
    (tmp_path / 'train.txt').write_text(f'p1 x1.png positive cohen\np2 ../../private/x.png positive cohen\n'
                                        f'p3 {outside} positive cohen\n')
    records = covidx_records(covidx, {'train': tmp_path / 'train.txt'})
    assert [Path(r['path']).name for r in records] == ['x1.png'] and len(records.left_out) == 2


def test_an_images_folder_that_is_a_symbolic_link_out_of_the_collection_is_named_as_one(tmp_path):
    elsewhere = tmp_path / 'elsewhere'
    _image(elsewhere / 'a.jpg')
    root = _ieee8023(tmp_path, 'patientid,finding,view,modality,folder,filename', ['1,COVID-19,PA,X-ray,images,a.jpg'])
    shutil.rmtree(root / 'images')
    (root / 'images').symlink_to(elsewhere, target_is_directory=True)
    source = ieee8023_records(root)
    assert list(source) == []
    assert [why for _, why in source.left_out] == [
        f'ieee8023: images is a symbolic link to {elsewhere}, outside the collection (copy the files there, or give '
        'that folder instead)']


def test_a_manifest_with_a_byte_order_mark_is_read_and_one_not_in_utf8_is_named(tmp_path):
    _image(tmp_path / 'a.png')
    (tmp_path / 'm.csv').write_bytes('path,label\na.png,normal\n'.encode('utf-8-sig'))
    assert [r['label'] for r in manifest_records(tmp_path / 'm.csv')] == ['normal']
    (tmp_path / 'm.csv').write_bytes('path,label\na.png,normré\n'.encode('latin-1'))
    with pytest.raises(ValueError, match=r'm\.csv: the manifest is not UTF-8 text'):
        manifest_records(tmp_path / 'm.csv')
