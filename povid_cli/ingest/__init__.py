"""The ingest job: sources -> DATA/items (readers, image normalisation, planning on the runner)."""
