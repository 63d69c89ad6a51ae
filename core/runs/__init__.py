"""Runs: the folder each experiment leaves behind, and what is done with it afterwards.

Run folders written atomically and listed, zips of run folders, evaluation on the validation split,
exports, prediction with a reloaded model, and explanation heatmaps.
"""
