"""One module per family of source layouts; povid_cli/ingest/sources.py picks one."""
