"""Wire contract v1: message schemas only, no I/O."""
