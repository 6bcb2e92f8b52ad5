"""The bundled sample: 16 real pediatric chest X-rays from Kermany et al. (2018), CC BY 4.0.

Shipped inside the package (see bundled/kermany16/ATTRIBUTION.md) as the default dataset of the
recipes: 8 normal and 8 (bacterial) pneumonia films. Far too few to measure accuracy; enough to run
every pipeline end to end on real radiographs. No COVID-19 image is among them.
"""
import re
from pathlib import Path
from typing import Dict, List

__all__ = ['SAMPLE_NAME', 'kermany_patient_id', 'sample_dir', 'sample_records']

SAMPLE_NAME = 'kermany16'
_PERSON = re.compile(r'^(person\d+)_(?:bacteria|virus)_\d+$', re.IGNORECASE)


def kermany_patient_id(filename: str) -> str:
    """Patient of a Kermany chest_xray file: personN for personN_bacteria_M / personN_virus_M, else the file."""
    stem = Path(filename).stem
    match = _PERSON.match(stem)
    return match.group(1) if match else stem  # NORMAL2-IM-xxxx-0001: one patient per image


def sample_dir() -> Path:
    """Folder of the bundled sample: one sub-folder per class."""
    return Path(__file__).resolve().parent / 'bundled' / SAMPLE_NAME


def sample_records() -> List[Dict[str, str]]:
    """One record per bundled image: path, label (its folder), patient_id and source."""
    return [
        dict(path=str(path), label=path.parent.name, patient_id=kermany_patient_id(path.name), source=SAMPLE_NAME)
        for path in sorted(sample_dir().glob('*/*.jpeg'))
    ]
