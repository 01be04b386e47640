"""Sweeps (`python sweep.py sweep=<name>`): a conf/sweep spec run through `train.py -m`, then compared.

`spec` reads a spec and runs it; collecting, tables and heatmaps read the jobs' result.json files.
"""
