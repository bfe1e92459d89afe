"""What a run made: the overview (and, later, Croissant metadata and the report)."""
