"""Importers: bring a public or local dataset into limbscan's schema (``DS/dataset.json``).

Each reads every image once (a broken file is found now, not mid-training), lists what it
left out as :class:`~limbscan.errors.Skipped`, and raises :class:`~limbscan.errors.LimbscanError`
when nothing usable is left.
"""

from limbscan.data.importers.coco import import_coco
from limbscan.data.importers.common import ImportResult
from limbscan.data.importers.folder import import_folder
from limbscan.data.importers.fracatlas import import_fracatlas
from limbscan.data.importers.mura import import_mura
from limbscan.data.importers.yolo import import_yolo

IMPORTERS = {
    "fracatlas": import_fracatlas,
    "folder": import_folder,
    "coco": import_coco,
    "mura": import_mura,
    "yolo": import_yolo,
}

__all__ = [
    "IMPORTERS", "ImportResult", "import_coco", "import_folder", "import_fracatlas", "import_mura", "import_yolo",
]
