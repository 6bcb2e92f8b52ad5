"""The bundled sample: 16 real radiographs with their attribution and patient ids."""
from collections import Counter

from magsd_timm.data.reader import read_image
from magsd_timm.data.sample import kermany_patient_id, sample_dir, sample_records


def test_sample_ships_16_labelled_images_with_attribution():
    records = sample_records()
    assert len(records) == 16
    assert Counter(r['label'] for r in records) == {'normal': 8, 'pneumonia': 8}
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
