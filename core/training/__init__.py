"""Training: one experiment from data to run folder, the frozen backbone's feature cache, background jobs
that pages and the CLI can watch and stop, and duration estimates measured on this machine.
"""
