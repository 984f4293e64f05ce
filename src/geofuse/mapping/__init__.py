"""Whole-scene mapping (predict) and map accuracy assessment with area estimates (assess)."""
