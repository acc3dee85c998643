"""VQ quantizers (kmeans, taming, chameleon) behind one interface, and the `vbpe quantize` job."""
