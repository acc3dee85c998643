"""Apply a learned vocabulary to code grids and write token corpora for trainers."""
