"""limbscan.eval.report_blocks: every cell's number formatting and the words for an undefined AUC."""

from __future__ import annotations

import numpy as np

from limbscan.eval.report_blocks import auc_text, num, p_value, part_order, table, why_undefined, with_ci


def test_numbers_to_three_decimals_and_undefined_in_words():
    assert num(0.91234) == "0.912" and num(np.float32(0.5)) == "0.500" and num(12.345, 1) == "12.3"
    assert num(3) == num(np.int64(3)) == "3" and num(True) == "true" and num("iomin") == "iomin"
    assert num(None) == num(float("nan")) == "undefined"
    assert with_ci(0.9, [0.8, 0.95]) == "0.900 [0.800, 0.950]"
    assert with_ci(0.9, None) == with_ci(0.9, [None, 0.95]) == "0.900" and with_ci(None, [0.1, 0.2]) == "undefined"
    assert p_value(0.0004) == "< 0.001" and p_value(0.0312) == "0.031" and p_value(None) == "undefined"


def test_an_undefined_auc_says_why():
    assert auc_text({"auc": 0.9, "auc_ci95": [0.8, 0.95]}) == "0.900 [0.800, 0.950]"
    assert auc_text({"auc": 0.9, "auc_ci95": [0.8, 0.95]}, ci=False) == "0.900"
    assert auc_text({"auc": None, "n": 20, "n_abnormal": 0}) == "undefined (no abnormal images)"
    assert why_undefined({"n": 16, "n_pos": 16}) == "no normal images" and why_undefined({"n": 0, "n_pos": 0}) == "no images"
    assert why_undefined({"auc_undefined_reason": "said so"}) == "said so"
    assert why_undefined({}) == "one class only" and why_undefined({}, "no abnormal images") == "no abnormal images"


def test_tables_align_numbers_right_and_parts_sort_in_body_order():
    assert table(["a", "b", "c"], []).numeric == [False, True, True]
    assert table(["a", "b"], [], [True, False]).numeric == [True, False]
    assert sorted(["zzz", "hip", "leg"], key=part_order)[-1] == "zzz"  # an unknown part last
