"""Analyses of ``limbscan cv`` folders, without training anything: a lever against its baseline
fold by fold (``cv_pairs``), fusion rules on the out-of-fold scores (``fusion_rules``), the
whole-image stage's test-time flip (``tta_flip``). Run as ``python -m benchmarks.cv.NAME``."""
