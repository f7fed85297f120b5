"""Parallel plans over torch.distributed: plain tensor parallel (tp.py), the indexer-rank plan (hetero.py), their
launch under torchrun (launch.py, follow.py), one-sided GPU links (peer.py), checkpoint slices (slices.py), and the
multi-GPU decode latency model (latency.py, report.py)."""
