"""The report job: a self-contained HTML page of DATA's pairs (and side-by-side images)."""
