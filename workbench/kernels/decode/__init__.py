"""Sparse decode: y = sum_j acts[:, j] * W_dec[indices[:, j]] (+ b_dec); reference, Triton, op."""
