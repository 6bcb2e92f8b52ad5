"""Helpers the tests share: image and DICOM files, a Hub-compatible server on 127.0.0.1, output listings."""
