"""BatchTopK selection: the flat indices of the n largest entries of a whole batch (torch.topk + sort)."""
