"""Runs: the folder each experiment leaves behind (written atomically, checked against its schema), and what
is done with it afterwards: zips, evaluation, exports, prediction, explanation heatmaps and the room's ledger.
"""
