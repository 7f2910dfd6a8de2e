"""Grokking on modular arithmetic (Power et al.; Han et al.): the task, a small decoder-only transformer, and its
step-counted training, measured through the library's monitor (docs/han-et-al.md)."""
