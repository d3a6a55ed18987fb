"""Where the shared third-party test data lives (Rubin sample alerts, schemas, catalogues).

``LANNER_SHARED_DATA`` points at it; by default it is ``shared/data`` next to the repository
(``<repo>/../shared/data``), as in the development layout. See the README there for provenance.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsst.alert.packet import schema as lsst_schema

#: Root of the repository (this file is ``tests/support/data.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The data shipped in the package (`broker.data`): the tests read the demo's copy, not their own.
BUNDLED_DATA = REPO_ROOT / "broker" / "data"
#: The 53 real ZTF public alerts (provenance in the README there).
ZTF_SAMPLES = BUNDLED_DATA / "ztf"


def shared_data() -> Path:
    """The shared data folder; raise with a clear message if it is missing."""
    configured = os.environ.get("LANNER_SHARED_DATA")
    root = Path(configured) if configured else REPO_ROOT / ".." / "shared" / "data"
    root = root.resolve()
    if not root.is_dir():
        msg = f"shared test data not found at {root}; set LANNER_SHARED_DATA to its folder"
        raise FileNotFoundError(msg)
    return root


def shared_data_or_none() -> Path:
    """The shared data folder, or a path that does not exist when it is missing."""
    try:
        return shared_data()
    except FileNotFoundError:
        return REPO_ROOT / ".missing-shared-data"


def rubin_sample_alert(version: str) -> Path:
    """The Avro container file of Rubin's example alert for a schema version such as ``"11.1"``.

    Taken from the shared data folder when it is there, else from the ``lsst-alert-packet``
    package, which ships the same files (the shared copies were taken from it).
    """
    path = shared_data_or_none() / "sample_alerts" / "lsst" / version / "fakeAlert.avro"
    if not path.is_file():
        major, minor = version.split(".")
        path = Path(lsst_schema.get_schema_path(int(major), int(minor))) / "sample_data" / \
            "fakeAlert.avro"
    if not path.is_file():
        msg = f"no Rubin sample alert for schema {version} at {path}"
        raise FileNotFoundError(msg)
    return path
