"""The quantize stage's run function under the name every stage shares (`jobs._entry`, `vbpe submit`)."""
from pipeline.quantize.run import run_quantize as run

__all__ = ["run"]
