"""Basic facts every layer reads: the output's file names, statuses, errors, labels, licence
texts, image headers, atomic writes. Nothing here imports another FLOW-DC layer."""
