"""`tmkt bench NAME`: each benchmark measures a part against a baseline in the same run.

They live above every package because they reach all of them (the loader bench builds a store
with `pipelines` to feed `tmkt`'s loader).
"""
