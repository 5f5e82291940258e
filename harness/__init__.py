"""Ledgerflow's processes run as children and their answers read off Kafka: the one harness under
the CLI (demo, benchmarks, chaos) and the test kit alike."""
