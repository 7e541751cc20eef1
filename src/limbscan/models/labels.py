"""Detector class ids, shared by the data layer that writes targets and the model that reads them.

A module of its own so that ``limbscan.data.geometry`` need not import the detector (and
torchvision's detection models) just to label a box. Id 0 is torchvision's background.
"""

from __future__ import annotations

NORMAL, ABNORMAL = 1, 2
CLASS_NAMES = {0: "background", NORMAL: "normal", ABNORMAL: "abnormal"}
