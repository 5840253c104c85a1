"""The bundled sample pair (MRI + PET-like, MNI ICBM152 based) in Slicer's Sample Data module.

Loaded offline from the installed module's own resources through file:// URIs (Sample Data copies
them into its cache and checks their SHA-256).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from amif.sample import FILES

CATEGORY = "AMIF"
SAMPLE_NAME = "AMIFSample"
THUMBNAIL = "AMIFSample.png"


def sample_data_source(resources) -> dict:
    """Keyword arguments for SampleData.SampleDataLogic.registerCustomSampleDataSource."""
    resources = Path(resources).resolve()
    paths = [resources / "SampleData" / name for name in FILES]
    return {
        "category": CATEGORY,
        "sampleName": SAMPLE_NAME,
        "uris": [p.as_uri() for p in paths],
        "fileNames": list(FILES),
        "nodeNames": [Path(name).stem for name in FILES],
        "checksums": ["SHA256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
        "thumbnailFileName": str(resources / "Icons" / THUMBNAIL),
    }


def register_sample_data(resources, register=None) -> None:
    """Register the sample in Sample Data (category AMIF); `register` defaults to SampleData's."""
    if register is None:
        import SampleData

        register = SampleData.SampleDataLogic.registerCustomSampleDataSource
    register(**sample_data_source(resources))
