"""Evaluation of generated handwriting: HWD, FID/KID, BFID/BKID, CER and delta-CER (docs/evaluation.md)."""

from imuru_pl.metrics.evaluator import evaluate_folders, evaluate_sets
from imuru_pl.metrics.folders import read_folder, write_folder
from imuru_pl.metrics.items import Item
from imuru_pl.metrics.report import format_table, save_report, scalars

__all__ = [
    "Item",
    "evaluate_folders",
    "evaluate_sets",
    "format_table",
    "read_folder",
    "save_report",
    "scalars",
    "write_folder",
]
