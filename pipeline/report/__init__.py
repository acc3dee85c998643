"""`vbpe report`: what a vocabulary learned, as pictures and figures (atlas, plots, summary)."""
