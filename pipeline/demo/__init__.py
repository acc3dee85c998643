"""`make demo`: the whole pipeline on real photos that ship inside installed packages (no downloads)."""
