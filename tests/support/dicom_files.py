"""Small DICOM files written with pydicom, as scanners lay them out (a helper of the tests)."""
from pathlib import Path
from typing import Optional

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(
        path: Path,
        pixels: Optional[np.ndarray],
        photometric: str = 'MONOCHROME2',
        transfer_syntax: str = ExplicitVRLittleEndian,
        **elements,
) -> Path:
    """Write a single-frame grey DICOM (8 or 16 bit, from the array's dtype); pixels=None omits PixelData."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b'\0' * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = 'DX', 'P001'
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    if pixels is not None:
        frames = pixels.shape[0] if pixels.ndim == 3 else 1
        bits = pixels.dtype.itemsize * 8
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        data = pixels.tobytes()
        # a compressed syntax stores encapsulated fragments: these hold raw bytes no codec can decode
        ds.PixelData = encapsulate([data]) if meta.TransferSyntaxUID.is_compressed else data
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path
