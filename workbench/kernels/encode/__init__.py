"""TopK encode: pre = x @ W_enc + b_enc, top-k per row (+ AuxK), sparse backward; reference, Triton, op."""
