"""What both roles are made of: the Node base, its clock and data, the model engine (one component per
concern, on one process or the ranks of a torchrun job) and local state on disk."""
