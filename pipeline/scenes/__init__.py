"""Generated scenes: small images of coloured shapes on textured backgrounds, with conversations about them.

A corpus on which "does the vocabulary help?" can be measured without downloading anything: every
answer depends on the image (colour, shape, size and position of objects, counts, relations, the
background texture), images and conversations are a pure function of (seed, index), and the output
is what the pipeline already reads: WebDataset shards for quantize/tokenize and LLaVA-style records
for `vbpe train prepare`.
"""
