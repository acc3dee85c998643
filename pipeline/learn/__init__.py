"""Learn a visual BPE vocabulary from code grids (contract: ../shared/VBPE_SPEC.md, in README)."""
