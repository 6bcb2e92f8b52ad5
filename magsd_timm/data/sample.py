"""The bundled sample: 16 real pediatric chest X-rays from Kermany et al. (2018), CC BY 4.0.

Shipped inside the package (see bundled/kermany16/ATTRIBUTION.md) as the default dataset of the
recipes: 8 normal and 8 bacterial pneumonia films. Far too few to measure accuracy; enough to run
every pipeline end to end on real radiographs. No COVID-19 image is among them. Its labels come from
the file names by the rule that labels Kermany's full collection (``kermany_label``), so a model
trained on the sample speaks the same class names as one trained on prepared Kermany data.
"""
import re
from pathlib import Path
from typing import Dict, List

__all__ = ['KERMANY_LABELS', 'SAMPLE_NAME', 'kermany_kind', 'kermany_label', 'kermany_patient_id', 'sample_dir',
           'sample_records']

SAMPLE_NAME = 'kermany16'
_PERSON = re.compile(r'^(person\d+)_(?:bacteria|virus)_\d+$', re.IGNORECASE)
# Kermany's kinds of film, in the class names of magsd_timm.CXR_LABEL_NAMES
KERMANY_LABELS = {'normal': 'normal', 'bacteria': 'bacterial pneumonia', 'virus': 'viral pneumonia'}


def kermany_patient_id(filename: str) -> str:
    """Patient of a Kermany chest_xray file: personN for personN_bacteria_M / personN_virus_M, else the file."""
    stem = Path(filename).stem
    match = _PERSON.match(stem)
    return match.group(1) if match else stem  # NORMAL2-IM-xxxx-0001: one patient per image


def kermany_kind(path: Path) -> str:
    """Kind of a Kermany film from its name and folder: bacteria, virus, normal, or pneumonia (unspecified)."""
    name = path.stem.lower()
    kind = 'bacteria' if '_bacteria_' in name else 'virus' if '_virus_' in name else 'normal'
    return 'pneumonia (unspecified)' if kind == 'normal' and path.parent.name.upper() != 'NORMAL' else kind


def kermany_label(path: Path) -> str:
    """Class name of a Kermany film (KERMANY_LABELS); its kind when it has none."""
    kind = kermany_kind(path)
    return KERMANY_LABELS.get(kind, kind)


def sample_dir() -> Path:
    """Folder of the bundled sample: one sub-folder per class."""
    return Path(__file__).resolve().parent / 'bundled' / SAMPLE_NAME


def sample_records() -> List[Dict[str, str]]:
    """One record per bundled image: path, label (its folder), patient_id and source."""
    return [
        dict(path=str(path), label=kermany_label(path), patient_id=kermany_patient_id(path.name), source=SAMPLE_NAME)
        for path in sorted(sample_dir().glob('*/*.jpeg'))
    ]
