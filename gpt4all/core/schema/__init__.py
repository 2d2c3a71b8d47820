"""Config schemas, one module per stage: each owns the config nodes its stage reads."""
