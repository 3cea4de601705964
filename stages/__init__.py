"""One module per stage: ingest, hallucinate, distort, sample, filter, export, train.

Each stage is a pure function over a batch of rows plus a frozen config (and a backend); the
runner in povid_cli owns files, shards, resume, progress and the manifest.
"""
