"""`python -m nanovlm.bench`: what the Lightning training path costs against a minimal plain-PyTorch loop.

`figures` measures the five figures and writes the table; `__main__` runs it.
"""
