"""Inputs and planning: reading every input format (inputs.py, dwca.py), the licence column
(license_columns.py), and the plan that fixes every row's shard, key and label (plan.py,
stored_options.py)."""
