"""Rebuild examples/: 20 FracAtlas test-split radiographs (10 fractured) and one CR DICOM.

    python examples/build.py bench/fracatlas    # the dataset `make bench` imports (split seed 0)

Only test-split images, so none trained the shipped model; chosen at random (seed 0) among the
files read whole, 7 leg and 3 hip of each label.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

from limbscan.data.dataset import Dataset

HERE = Path(__file__).resolve().parent
PER_LABEL = {"leg": 7, "hip": 3}
DICOM = ("RG3_J2KR.dcm", "tibia-cr.dcm")  # pydicom-data: a CR of a distal tibia with a lesion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="the imported FracAtlas lower-limb dataset, split with seed 0")
    args = parser.parse_args()
    ds = Dataset.load(args.dataset)
    rng = np.random.default_rng(0)
    test = [im for im in ds.images if im.get("split") == "test" and not im.get("truncated")]
    chosen = []
    for label in (1, 0):
        for part, n in PER_LABEL.items():
            pool = sorted((im for im in test if int(im["label"]) == label and im["body_part"] == part),
                          key=lambda im: im["file_name"])
            chosen += [pool[i] for i in sorted(rng.choice(len(pool), n, replace=False))]
    out = HERE / "fracatlas"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    rows = []
    for im in chosen:
        name = Path(im["file_name"]).name
        shutil.copyfile(ds.image_path(im), out / name)
        rows.append({"file": f"fracatlas/{name}", "label": "fractured" if int(im["label"]) else "normal",
                     "body_part": im["body_part"]})
    from pydicom.data import get_testdata_file

    (HERE / "dicom").mkdir(exist_ok=True)
    shutil.copyfile(get_testdata_file(DICOM[0]), HERE / "dicom" / DICOM[1])
    rows.append({"file": f"dicom/{DICOM[1]}", "label": "lesion (non-ossifying fibroma)", "body_part": "leg"})
    with open(HERE / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "label", "body_part"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} examples in {HERE}")


if __name__ == "__main__":
    main()
