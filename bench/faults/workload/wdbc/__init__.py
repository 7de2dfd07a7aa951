"""Tumour classification on the Wisconsin breast-cancer set: see ``wdbc.train``."""
