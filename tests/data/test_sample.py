"""The bundled sample: 16 real radiographs with their attribution and patient ids."""
from collections import Counter

from magsd_timm.data.reader import read_image
from magsd_timm.data.sample import kermany_patient_id, sample_dir, sample_records


def test_sample_ships_16_labelled_images_with_attribution():
    records = sample_records()
    assert len(records) == 16
    assert Counter(r['label'] for r in records) == {'normal': 8, 'bacterial pneumonia': 8}
    assert {r['source'] for r in records} == {'kermany16'}
    attribution = (sample_dir() / 'ATTRIBUTION.md').read_text()
    assert 'CC BY 4.0' in attribution and 'Kermany' in attribution


def test_patient_ids_follow_the_kermany_file_names():
    assert kermany_patient_id('person1946_bacteria_4874.jpeg') == 'person1946'
    assert kermany_patient_id('person12_virus_3.jpeg') == 'person12'
    assert kermany_patient_id('NORMAL2-IM-1427-0001.jpeg') == 'NORMAL2-IM-1427-0001'
    patients = Counter(r['patient_id'] for r in sample_records())
    assert patients['person1946'] == 2 and len(patients) == 15


def test_every_sample_image_reads_as_a_radiograph():
    for record in sample_records():
        image = read_image(record['path'])
        assert image.ndim == 2 and min(image.shape) >= 500 and 0 <= image.min() <= image.max() <= 1


def test_sample_labels_are_the_kermany_converters_and_the_model_vocabulary(tmp_path):
    import shutil

    import magsd_timm
    from magsd_timm.data.sources import kermany_records

    for record in sample_records():  # the same films laid out as Kermany publishes them
        folder = tmp_path / 'chest_xray' / 'train' / ('NORMAL' if record['label'] == 'normal' else 'PNEUMONIA')
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(record['path'], folder)
    converted = {r['path'].rsplit('/', 1)[-1]: r['label'] for r in kermany_records(tmp_path / 'chest_xray')}
    assert converted == {r['path'].rsplit('/', 1)[-1]: r['label'] for r in sample_records()}
    assert set(converted.values()) <= set(magsd_timm.CXR_LABEL_NAMES)
